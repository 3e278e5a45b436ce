//! A TCP relay that a test can cut (every connection dropped, new ones refused) and restore on
//! the same address: how tests take PostgreSQL or Redis away from a running node. It can also
//! stall (every connection kept open, nothing forwarded either way): a service that hangs
//! rather than fails, which only a timeout ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// A severable relay to one upstream address.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept: Mutex<Option<AbortHandle>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    stalled: watch::Sender<bool>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let relay = Relay {
            addr: listener.local_addr().expect("relay address"),
            upstream,
            accept: Mutex::new(None),
            conns: Arc::new(Mutex::new(Vec::new())),
            stalled: watch::Sender::new(false),
        };
        relay.serve(listener);
        relay
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, conns) = (self.upstream, self.conns.clone());
        let stalled = self.stalled.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut stalled = stalled.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let stall = async {
                            let _ = stalled.wait_for(|s| *s).await;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            // Hold both sockets open and forward nothing, until cut.
                            () = stall => std::future::pending::<()>().await,
                        }
                    }
                });
                conns.lock().expect("relay lock").push(conn.abort_handle());
            }
        });
        *self.accept.lock().expect("relay lock") = Some(task.abort_handle());
    }

    /// Drops every connection and stops listening (new connections are refused).
    pub fn cut(&self) {
        if let Some(accept) = self.accept.lock().expect("relay lock").take() {
            accept.abort();
        }
        for conn in self.conns.lock().expect("relay lock").drain(..) {
            conn.abort();
        }
    }

    /// Stops forwarding, in both directions, on every connection and on new ones, keeping
    /// them all open: whatever waits for an answer waits until its own timeout.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Listens again on the same address (forwarding again if it was stalled).
    pub async fn restore(&self) {
        self.stalled.send_replace(false);
        // The aborted accept task drops its listener when it is next polled; retry briefly.
        for _ in 0..200 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return self.serve(listener),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
        panic!("could not listen on {} again", self.addr);
    }
}
