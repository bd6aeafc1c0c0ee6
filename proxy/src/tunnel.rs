//! Egress through an HTTP CONNECT forward proxy (corporate networks): pingora connects to the proxy,
//! this opens a tunnel to the real upstream, and TLS (if any) runs end to end inside it.

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::prelude::*;
use pingora::protocols::l4::stream::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The upstream is named to the forward proxy by host and port; it is never resolved here, so the
/// proxy's DNS view applies.
#[derive(Debug)]
pub struct ConnectTunnel {
    /// `host:port` of the forward proxy.
    pub proxy: String,
    /// `host:port` of the upstream, as sent in `CONNECT`.
    pub target: String,
}

const MAX_RESPONSE_HEAD: usize = 8 * 1024;

#[async_trait]
impl L4Connect for ConnectTunnel {
    async fn connect(&self, _resolved: &pingora::protocols::l4::socket::SocketAddr) -> Result<Stream> {
        Ok(Stream::from(self.open().await?))
    }
}

impl ConnectTunnel {
    /// A TCP stream to the forward proxy, tunnelled through to the target.
    pub async fn open(&self) -> Result<TcpStream> {
        let mut tcp = TcpStream::connect(&self.proxy).await.or_err(ErrorType::ConnectError, "connecting to the forward proxy")?;
        let _ = tcp.set_nodelay(true);
        let request = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", self.target);
        tcp.write_all(request.as_bytes()).await.or_err(ErrorType::ConnectError, "sending CONNECT")?;
        // Read the response head byte by byte: nothing after it may be consumed.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_RESPONSE_HEAD {
                return Error::e_explain(ErrorType::ConnectProxyFailure, "forward proxy response head too long");
            }
            let byte = tcp.read_u8().await.or_err(ErrorType::ConnectProxyFailure, "reading the forward proxy's answer")?;
            head.push(byte);
        }
        let status_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
        let status = std::str::from_utf8(status_line).ok().and_then(|line| line.split(' ').nth(1));
        if status != Some("200") {
            let line = String::from_utf8_lossy(status_line).into_owned();
            return Error::e_explain(ErrorType::ConnectProxyFailure, format!("forward proxy refused CONNECT {}: {line}", self.target));
        }
        Ok(tcp)
    }
}
