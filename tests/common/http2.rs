//! Raw HTTP/2 clients of the gRPC ingress, for what tonic's own client will not send
//! (stalled or trickling bodies, two messages in one unary body), and the outcome of such
//! a call as the server sent it.

use bytes::Bytes;

/// Opens a raw HTTP/2 connection to `addr`.
pub async fn h2_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    send.ready().await.unwrap()
}

/// The grpc-status and grpc-message of a finished response (headers-only or in the
/// trailers).
pub async fn grpc_outcome(response: h2::client::ResponseFuture) -> (String, String) {
    let field = |map: &http::HeaderMap, name| {
        map.get(name)
            .map_or("none".to_owned(), |v| percent_decoded(v.to_str().unwrap()))
    };
    let response = response.await.unwrap();
    if response.headers().contains_key("grpc-status") {
        let headers = response.headers();
        return (
            field(headers, "grpc-status"),
            field(headers, "grpc-message"),
        );
    }
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    (
        field(&trailers, "grpc-status"),
        field(&trailers, "grpc-message"),
    )
}

/// `text` with its `%XX` escapes decoded (grpc-message is percent-encoded).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
