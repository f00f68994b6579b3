//! A loopback TCP proxy in front of a harness Redis server that can lose one reply: once
//! armed, it forwards the next request as usual, then drops the server's reply and closes
//! the client's connection. The command ran on the server; the client only sees the
//! connection break, the "ambiguous write" of a real network. It also counts the chunks
//! clients send: requests written together (a pipeline) arrive as one chunk on loopback.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; dropping it stops accepting connections.
pub struct CutProxy {
    port: u16,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    armed: AtomicBool,
    cuts: AtomicU32,
    chunks: AtomicU32,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<upstream>`.
    pub async fn start(upstream: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State::default());
        let accept = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    tokio::spawn(forward(client, server, Arc::clone(&state)));
                }
            }
        });
        CutProxy {
            port,
            state,
            accept,
        }
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Loses the next reply that comes back from the server.
    pub fn cut_next_reply(&self) {
        self.state.armed.store(true, Ordering::SeqCst);
    }

    /// How many chunks clients have sent through the proxy so far.
    pub fn chunks(&self) -> u32 {
        self.state.chunks.load(Ordering::SeqCst)
    }

    /// How many replies were lost so far.
    pub fn cuts(&self) -> u32 {
        self.state.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream, state: Arc<State>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let requests = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            state.chunks.fetch_add(1, Ordering::SeqCst);
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let replies = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if state.armed.swap(false, Ordering::SeqCst) {
                state.cuts.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            client_write.write_all(&buf[..n]).await?;
        }
    };
    // Either side ending ends both; dropping the sockets closes the client's connection.
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
    }
}
