//! A small SMTP server that keeps what it receives: for tests, benchmarks and local trials,
//! where the real thing would be a mail relay. It speaks just enough SMTP for lettre
//! (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), without TLS or authentication.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One message as received: envelope and the raw DATA (headers and body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Received {
    /// The body with quoted-printable soft breaks and escapes undone (enough to find a code
    /// or a link in it).
    pub fn decoded(&self) -> String {
        let joined = self.data.replace("=\r\n", "").replace("=\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

pub struct SmtpSink {
    addr: SocketAddr,
    inbox: Arc<Mutex<Vec<Received>>>,
    count: watch::Sender<usize>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Open client connections, so that stopping also cuts the ones a client pools.
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl SmtpSink {
    /// Listens on 127.0.0.1 on a port the OS picks.
    pub async fn start() -> std::io::Result<SmtpSink> {
        Self::start_on("127.0.0.1:0".parse().expect("address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<SmtpSink> {
        let listener = TcpListener::bind(addr).await?;
        let sink = SmtpSink {
            addr: listener.local_addr()?,
            inbox: Arc::default(),
            count: watch::channel(0).0,
            task: Mutex::new(None),
            sessions: Arc::default(),
        };
        sink.serve(listener);
        Ok(sink)
    }

    fn serve(&self, listener: TcpListener) {
        let (inbox, count) = (self.inbox.clone(), self.count.clone());
        let sessions = self.sessions.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (inbox, count) = (inbox.clone(), count.clone());
                let s = tokio::spawn(async move {
                    let _ = session(stream, inbox, count).await;
                });
                let mut all = sessions.lock().unwrap_or_else(|e| e.into_inner());
                all.retain(|h| !h.is_finished());
                all.push(s);
            }
        });
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// `smtp://127.0.0.1:<port>`, for SMTP_URL.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Stops listening and cuts open connections: the server is down until
    /// [`SmtpSink::resume`].
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        for s in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            s.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&self) -> std::io::Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    pub fn messages(&self) -> Vec<Received> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many messages went to `address` (as in RCPT TO, without the angle brackets).
    pub fn count_to(&self, address: &str) -> usize {
        let want = format!("<{address}>");
        self.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(&want)))
            .count()
    }

    /// Waits until at least `n` messages went to `address`; false at the deadline.
    pub async fn wait_for_to(&self, address: &str, n: usize, deadline: Duration) -> bool {
        let mut rx = self.count.subscribe();
        let check = async {
            loop {
                if self.count_to(address) >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(deadline, check).await.is_ok() && self.count_to(address) >= n
    }

    /// Waits until at least `n` messages have arrived; None at the deadline.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Option<Vec<Received>> {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(deadline, rx.wait_for(|c| *c >= n))
            .await
            .ok()?
            .ok()?;
        Some(self.messages())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn session(
    stream: TcpStream,
    inbox: Arc<Mutex<Vec<Received>>>,
    count: watch::Sender<usize>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 portcullis-sink ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-portcullis-sink\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_string();
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().to_string());
            b"250 ok\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push_str("\r\n");
            }
            let n = {
                let mut inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
                inbox.push(Received {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
                inbox.len()
            };
            count.send_replace(n);
            b"250 queued\r\n"
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
