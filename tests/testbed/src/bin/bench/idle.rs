//! Idle connections held through both tunnels, for the memory cost of one connection.
//!
//! `nodetunnel-bench hold-serve <ip:port>` (hidden, started in the server pod) accepts
//! connections one at a time, answers the single byte each client sends with one byte, and
//! keeps every connection open until it is killed. [`open_held`] (run in the client pod)
//! opens connections one after another and waits for that answer on each, so every connection
//! it returns is established end to end: client → n1's tunnel → HBONE stream → n2's tunnel →
//! server. Nothing else moves on them afterwards.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use std::time::Duration;

use nodetunnel_testbed::Netns;

use crate::iperf::Reaped;
use crate::BenchResult;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves forever on `addr` (the bench kills the process); holds every connection.
pub fn serve(addr: &str) -> BenchResult {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("hold-serve {addr}: not an ip:port"))?;
    let listener = TcpListener::bind(addr)?;
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut byte = [0u8; 1];
        let answered = stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.read_exact(&mut byte))
            .and_then(|()| stream.write_all(&byte));
        if answered.is_ok() {
            held.push(stream);
        }
    }
    Ok(())
}

/// `nodetunnel-bench hold-serve <addr>` inside `ns`, listening when this returns.
pub fn start_server(ns: &Netns, addr: SocketAddr) -> BenchResult<Reaped> {
    crate::serve_in(ns, "hold-serve", addr)
}

/// Opens `count` connections to `dst`, one at a time, each answered once by the server.
/// Must run inside the client's namespace; the sockets stay in it when returned.
pub fn open_held(dst: SocketAddr, count: usize) -> io::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(b"x")?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connection {i} of {count} to {dst}: no answer: {e}"),
            )
        })?;
        held.push(stream);
    }
    Ok(held)
}
