//! `nodetunnel-echo <ip:port>`: echoes every connection's bytes back until EOF, then closes
//! it; any number of connections at once (one tokio task each). Prints `listening <addr>` once
//! bound and `accepted <n>` at every thousandth connection, so a test can wait for it and see
//! how far a load got. Run inside the server pod's namespace ([`NsProcess`]); the test's own
//! process keeps its file-descriptor limit for the client ends.
//!
//! [`NsProcess`]: nodetunnel_testbed::process::NsProcess

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: nodetunnel-echo <ip:port>");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nodetunnel-echo: {addr:?} is not an ip:port: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodetunnel-echo: a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodetunnel-echo: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!("listening {addr}");
    let mut accepted: u64 = 0;
    loop {
        let (stream, _) = listener.accept().await?;
        accepted += 1;
        if accepted.is_multiple_of(1000) {
            println!("accepted {accepted}");
        }
        tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}
