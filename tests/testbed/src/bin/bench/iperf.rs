//! iperf3 in a namespace: a server process and a client run with `-J`, read without a JSON
//! library.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nodetunnel_testbed::{eventually::wait_until, Netns};

use crate::BenchResult;

/// Kills (SIGKILL) and reaps a helper process (a server) on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on TCP `port` inside `ns`.
pub fn wait_listening(ns: &Netns, port: u16, what: &str) -> BenchResult {
    let listening = wait_until(Duration::from_secs(5), || {
        ns.exec("ss", &["-Hltn", &format!("( sport = :{port} )")])
            .is_ok_and(|out| !out.trim().is_empty())
    });
    match listening {
        true => Ok(()),
        false => Err(format!("{what} did not start listening on :{port} in {}", ns.name()).into()),
    }
}

/// `iperf3 -s -B <ip> -p <port>` inside `ns`, listening when this returns.
pub fn start_server(ns: &Netns, ip: Ipv4Addr, port: u16) -> BenchResult<Reaped> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "iperf3", "-s", "-B"])
        .arg(ip.to_string())
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Reaped(child);
    wait_listening(ns, port, "iperf3 server")?;
    Ok(server)
}

/// What one iperf3 client run moved (`end.sum_received` of its JSON output).
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub bits_per_second: f64,
    pub bytes: f64,
}

/// `iperf3 -c <server> -B <client> -p <port> -t <seconds> -P <streams> -J` inside `ns`.
pub fn client(
    ns: &Netns,
    server: Ipv4Addr,
    client: Ipv4Addr,
    port: u16,
    seconds: u32,
    streams: u32,
) -> BenchResult<Run> {
    let out = ns.exec(
        "iperf3",
        &[
            "-c",
            &server.to_string(),
            "-B",
            &client.to_string(),
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    )?;
    let field = |key| {
        sum_received(&out, key)
            .ok_or_else(|| format!("no end.sum_received.{key} in iperf3 output:\n{out}"))
    };
    Ok(Run {
        bits_per_second: field("bits_per_second")?,
        bytes: field("bytes")?,
    })
}

/// `end.sum_received.<key>` (a number) from iperf3's JSON, without a JSON library.
pub fn sum_received(json: &str, key: &str) -> Option<f64> {
    let end = json.rfind("\"sum_received\"")?;
    let rest = &json[end..];
    let rest = &rest[..rest.find('}')?];
    let key = format!("\"{key}\":");
    let at = rest.find(&key)? + key.len();
    let number: String = rest[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect();
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::sum_received;

    #[test]
    fn parses_iperf3_json() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 1.5e9, "bytes": 7}, "sum_received": {"seconds": 10, "bytes": 5, "bits_per_second":	12345678901.5, "sender": true}, "cpu_utilization_percent": {"bytes": 9}}}"#;
        assert_eq!(sum_received(json, "bits_per_second"), Some(12345678901.5));
        assert_eq!(sum_received(json, "bytes"), Some(5.0));
        assert_eq!(sum_received(json, "retransmits"), None);
    }
}
