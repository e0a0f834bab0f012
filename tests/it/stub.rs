//! A small HTTP server on a 127.0.0.1 port, for the tests that talk to endpoints (an
//! OpenAI-compatible judge or simulator, a relay that is down): `reply(path, body)`
//! answers each request, every request is kept, and keep-alive connections are served
//! until the client closes them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

type Handler = dyn Fn(&str, &str) -> (u16, String) + Send + Sync;

/// One request as the stub saw it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

pub(crate) struct Stub {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Stub {
    /// Serves on `port` (0: a free one).
    pub fn start(
        port: u16,
        reply: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> Stub {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply: Arc<Handler> = Arc::new(reply);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (reply, log) = (Arc::clone(&reply), Arc::clone(&log));
                std::thread::spawn(move || serve(stream, &*reply, &log));
            }
        });
        Stub { base, seen }
    }

    /// The requests whose path starts with `prefix`, in arrival order: (path, body).
    pub fn seen(&self, prefix: &str) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .map(|r| (r.path, r.body))
            .collect()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: std::net::TcpStream, reply: &Handler, log: &Mutex<Vec<Request>>) {
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut length, mut authorization) = (0usize, None);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(value.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        log.lock().unwrap().push(Request {
            path: path.clone(),
            authorization,
            body: body.clone(),
        });
        let (status, text) = reply(&path, &body);
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}
