//! Latency between hosts, added in userspace since the kernel has no `netem`: a TCP proxy on
//! this machine's address on the bridge that holds every chunk it reads for a fixed delay, in
//! each direction, before passing it on (in order, so a stream stays a stream).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Listens on `listen` and forwards each connection to `target`, `delay` later each way. The
/// proxy lives as long as this process (its address goes with the bridge).
pub(super) fn start(listen: SocketAddr, target: SocketAddr, delay: Duration) -> Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("listening on {listen} for latency"))?;
    thread::Builder::new()
        .name(format!("latency-{listen}"))
        .spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                pipe(client_in, server.try_clone().ok(), delay);
                pipe(server_in, client.try_clone().ok(), delay);
            }
        })?;
    Ok(())
}

/// Carries `from` to `to`, each chunk `delay` after it was read; when either side ends, both
/// connections are shut down.
fn pipe(mut from: TcpStream, to: Option<TcpStream>, delay: Duration) {
    let Some(mut to) = to else {
        return;
    };
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_end = from.try_clone().ok();
    let _ = thread::Builder::new().spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // The sender drops: the writer passes on what is held, then ends.
    });
    let _ = thread::Builder::new().spawn(move || {
        while let Ok((at, chunk)) = due.recv() {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        if let Some(from) = reader_end {
            let _ = from.shutdown(Shutdown::Both);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_each_direction_for_the_delay_and_keeps_the_order() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        thread::spawn(move || {
            let (mut stream, _) = echo.accept().unwrap();
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = free.local_addr().unwrap();
        drop(free);
        let delay = Duration::from_millis(100);
        start(listen, target, delay).unwrap();

        let mut client = TcpStream::connect(listen).unwrap();
        let sent = Instant::now();
        client.write_all(b"one ").unwrap();
        client.write_all(b"two").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 7 {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "the proxy closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"one two");
        // There and back: the delay twice, at least.
        assert!(
            sent.elapsed() >= delay * 2,
            "came back after {:?}",
            sent.elapsed()
        );
    }
}
