//! The HTTP side of `ablate serve`: axum on a small tokio runtime.
//!
//! Why not a thread per connection (tiny_http, the first choice): browsers keep sockets
//! open between requests and open new ones in bursts (a page and its plots). tiny_http
//! gives each connection a pooled thread for as long as the socket lives, and its pool
//! can queue a new connection behind an idle one; Chromium then waited minutes for a
//! plot. An async server answers every socket, idle or not; the pages themselves are
//! still rendered one at a time, off the runtime's threads, over the one read-only
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::Response;

use super::{Page, ServeError, Site};

/// Serves `site` on `addr` until the process ends; `ready` gets the bound address (port 0
/// picks a free one).
pub fn serve(site: Site, addr: &str, ready: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    let listen = |message: String| ServeError::Listen {
        addr: addr.to_string(),
        message,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(|e| listen(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| listen(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| listen(e.to_string()))?;
    // Two threads for sockets; rendering runs on the blocking pool, one page at a time.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| listen(format!("cannot start the server's threads: {e}")))?;
    let site = Arc::new(Mutex::new(site));
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let site = Arc::clone(&site);
        async move { answer(site, method, uri).await }
    });
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| listen(e.to_string()))?;
        ready(bound);
        axum::serve(listener, app)
            .await
            .map_err(|e| listen(e.to_string()))
    })
}

/// Renders one request's page off the async threads.
async fn answer(site: Arc<Mutex<Site>>, method: Method, uri: Uri) -> Response {
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let rendered = tokio::task::spawn_blocking(move || {
        // A page that panicked leaves nothing half-written behind: the lock's data is
        // read-only, so a poisoned lock is still sound to use.
        let site = site.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if method == Method::GET || method == Method::HEAD {
            site.respond(&target)
        } else {
            site.error(405, "This server only reads: GET and HEAD.")
        }
    })
    .await;
    let page = rendered.unwrap_or_else(|_| Page {
        status: 500,
        content_type: "text/plain; charset=utf-8",
        body: b"ablate serve: this page failed to render (a bug: please report it)".to_vec(),
    });
    Response::builder()
        .status(StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, page.content_type)
        .body(Body::from(page.body))
        .expect("a status and a content type are a valid response")
}
