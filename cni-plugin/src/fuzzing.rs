//! Entry points for the fuzz targets (`fuzz/`) and the tests that replay their corpus
//! (`tests/fuzz_corpus.rs`). Not an API: hidden from the docs. Each runs the real decoders on
//! bytes, without the API server, sockets or the network namespace code.

use crate::event::{EventIp, PluginEvent};

/// What the plugin makes of one invocation. Byte 0 picks `CNI_COMMAND` (ADD, DEL, CHECK,
/// VERSION, STATUS, GC, or a bad one); bytes 1–2 are the length `n` (little-endian) of the
/// `CNI_ARGS` that follow; the rest is stdin (the network config with `prevResult`).
///
/// `ADD` runs only its decoding steps (`plugin::decode_add`): a fuzzer-written config could
/// otherwise point the plugin at any kubeconfig. Every other command runs the plugin whole,
/// as the runtime would; none of them reaches out. Returns the pod addresses `ADD` would send
/// the agent, or the plugin's error JSON and exit code.
pub fn cni_invocation(data: &[u8]) -> Result<Vec<EventIp>, (String, i32)> {
    const COMMANDS: [&str; 7] = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "BOGUS"];
    let command = COMMANDS[usize::from(data.first().copied().unwrap_or(0)) % COMMANDS.len()];
    let rest = data.get(1..).unwrap_or_default();
    let (cni_args, stdin) = match rest {
        [lo, hi, tail @ ..] => {
            let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
            tail.split_at(n)
        }
        _ => (&[][..], rest),
    };
    let cni_args = String::from_utf8_lossy(cni_args).into_owned();
    let env = move |name: &str| match name {
        "CNI_COMMAND" => Some(command.to_owned()),
        "CNI_CONTAINERID" => Some("0123456789abcdef".to_owned()),
        "CNI_NETNS" => Some("/var/run/netns/cni-fuzz".to_owned()),
        "CNI_IFNAME" => Some("eth0".to_owned()),
        "CNI_ARGS" => Some(cni_args.clone()),
        _ => None,
    };
    if command == "ADD" {
        return crate::plugin::decode_add(env, stdin).map_err(|e| (e.details(), 1));
    }
    let outcome = crate::plugin::run(env, stdin);
    match outcome.exit_code {
        0 => Ok(Vec::new()),
        code => Err((
            outcome
                .stdout
                .map(|json| json.to_string())
                .unwrap_or_default(),
            code,
        )),
    }
}

/// A plugin event body as the agent's event server receives it (`POST /cmdadd`): decoded,
/// its addresses checked as the agent checks them, and encoded again as the plugin sends it.
pub fn plugin_event(data: &[u8]) -> Result<PluginEvent, String> {
    let event: PluginEvent = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    event.addresses().map_err(|e| e.to_string())?;
    serde_json::to_vec(&event).map_err(|e| e.to_string())?;
    Ok(event)
}
