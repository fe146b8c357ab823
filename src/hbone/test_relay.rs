//! A TCP relay for tests that can make a peer vanish without closing anything: after
//! [`Relay::freeze`], the connections it carries stop moving bytes in both directions but stay
//! open, as when a peer is powered off or a NAT mapping is dropped. Connections made after a
//! freeze are relayed normally.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub struct Relay {
    pub addr: SocketAddr,
    freeze: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays connections made to `addr` (127.0.0.1, an ephemeral port) to `backend`.
    pub async fn start(backend: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let freeze = Arc::new(Notify::new());
        let frozen = freeze.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let frozen = frozen.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let mut freeze = std::pin::pin!(frozen.notified());
                    freeze.as_mut().enable();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = freeze => {
                            // Both sockets stay open and silent until the test ends.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Relay { addr, freeze, task }
    }

    /// Silences every connection relayed so far.
    pub fn freeze(&self) {
        self.freeze.notify_waiters();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
