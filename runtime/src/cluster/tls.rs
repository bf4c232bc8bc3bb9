//! Mutual TLS between cluster members (optional, `[cluster.tls]`).
//!
//! One CA signs every member's certificate. With TLS on, both member-to-member
//! channels use it, and both sides present and check a certificate:
//!
//! | channel | server side | client side |
//! |---|---|---|
//! | cluster port: Raft, forwarded writes and API requests (`network.rs`, `proxy.rs`) | [`TlsListener`] under axum | ureq (Raft, writes) and hyper (API) over [`Tls::connector`] |
//! | actor mesh, cluster port + 1 (`mesh.rs`) | ractor_cluster's `IncomingEncryptionMode::Tls` | `ractor_cluster::client_connect_enc` |
//!
//! A peer is checked against the CA; a server is also checked against the
//! host it is reached at (the `host` of `name@host:port`), so a member's
//! certificate must name that host. The cookie is still required on top.
//! Handshakes that fail are logged and counted
//! (`vpp_cluster_tls_handshakes_failed_total`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::ClusterTlsConfig;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Failed TLS handshakes on this process's cluster listeners.
static HANDSHAKES_FAILED: AtomicU64 = AtomicU64::new(0);

/// Failed handshakes so far (for `/metrics`).
pub fn handshakes_failed() -> u64 {
    HANDSHAKES_FAILED.load(Ordering::Relaxed)
}

/// One warning about failed handshakes per this long; the rest are counted.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// When a failed handshake was last logged, and how many were not since.
static LAST_LOGGED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
static UNLOGGED: AtomicU64 = AtomicU64::new(0);

/// Counts a failed handshake and logs it (at most one line per
/// [`LOG_EVERY`], with how many were not logged).
pub(super) fn handshake_failed(channel: &str, peer: impl std::fmt::Display, why: &str) {
    HANDSHAKES_FAILED.fetch_add(1, Ordering::Relaxed);
    let now = std::time::Instant::now();
    let due = match LAST_LOGGED.lock() {
        Ok(mut last) => {
            let due = last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
            if due {
                *last = Some(now);
            }
            due
        }
        Err(_) => true,
    };
    if due {
        let unlogged = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(%peer, channel, reason = why, unlogged, "TLS handshake with a peer failed");
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Loaded TLS settings of this member, shared by every channel.
#[derive(Clone)]
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    ureq: ureq::tls::TlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// Reads the PEM file at `path` for `key` (`cluster.tls.cert`, …).
fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

/// The certificates in `pem` (at least one).
fn certs(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {} holds no CERTIFICATE block",
            path.display()
        ));
    }
    Ok(certs)
}

impl Tls {
    /// Loads the files named in `cfg`; `None` when TLS is off. Errors name
    /// the key and the file.
    pub fn load(cfg: &ClusterTlsConfig) -> Result<Option<Tls>, String> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let (cert_pem, key_pem, ca_pem) = (
            read("cluster.tls.cert", &cfg.cert)?,
            read("cluster.tls.key", &cfg.key)?,
            read("cluster.tls.ca", &cfg.ca)?,
        );
        let chain = certs("cluster.tls.cert", &cfg.cert, &cert_pem)?;
        let cas = certs("cluster.tls.ca", &cfg.ca, &ca_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "cluster.tls.key: {} holds no usable private key: {e}",
                cfg.key.display()
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            roots.add(ca.clone()).map_err(|e| {
                format!(
                    "cluster.tls.ca: {} is not a usable CA certificate: {e}",
                    cfg.ca.display()
                )
            })?;
        }
        let roots = Arc::new(roots);
        let unpaired = |e: rustls::Error| {
            format!(
                "cluster.tls.cert/key: {} and {} do not make a usable pair: {e}",
                cfg.cert.display(),
                cfg.key.display()
            )
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions = rustls::DEFAULT_VERSIONS;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("cluster.tls.ca: {}: {e}", cfg.ca.display()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("cluster.tls: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(unpaired)?;
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("cluster.tls: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(unpaired)?;
        let ureq_chain: Vec<ureq::tls::Certificate<'static>> = chain
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let ureq_roots: Vec<ureq::tls::Certificate<'static>> = cas
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let ureq_key = ureq::tls::PrivateKey::from_pem(&key_pem).map_err(|e| {
            format!(
                "cluster.tls.key: {} holds no usable private key: {e}",
                cfg.key.display()
            )
        })?;
        let ureq = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&ureq_roots))
            .client_cert(Some(ureq::tls::ClientCert::new_with_certs(
                &ureq_chain,
                ureq_key,
            )))
            .build();
        Ok(Some(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            ureq,
        }))
    }

    /// Accepts TLS connections from members.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// Opens TLS connections to members.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }

    /// The same settings for ureq (Raft RPCs and forwarded writes).
    pub fn ureq(&self) -> ureq::tls::TlsConfig {
        self.ureq.clone()
    }

    /// Opens a TCP connection to `addr` (`host:port`) and runs the client
    /// handshake, checking the server's certificate against `host`.
    pub async fn connect(
        &self,
        addr: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = server_name(addr)?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector().connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("{addr}: TLS handshake failed: {e}")),
            Err(_) => Err(format!(
                "{addr}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
            )),
        }
    }
}

/// The name a member's certificate must carry: the host of `host:port`
/// (a DNS name or an IP address).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = host_of(addr)?;
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a DNS name or IP address: {e}"))
}

/// The host of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> Result<&str, String> {
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| format!("{addr:?} is not host:port"))
}

/// A TCP listener that hands axum only connections whose TLS handshake
/// succeeded. Handshakes run in their own tasks, so a slow or silent peer
/// holds up nobody else.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepter: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Wraps `listener`; `channel` names it in logs.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, channel: &'static str) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, incoming) = mpsc::channel(64);
        let accepter = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => handshake_failed(channel, peer, &e.to_string()),
                        Err(_) => handshake_failed(channel, peer, "no handshake in time"),
                    }
                });
            }
        });
        Self {
            incoming,
            local,
            accepter,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepter.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(x) => x,
            // The accepter never stops while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A PEM file `vpp cluster certs` writes.
#[derive(Debug)]
pub struct Issued {
    /// File name: `ca.crt`, `ca.key`, `<member>.crt`, `<member>.key`.
    pub file: String,
    /// PEM text.
    pub pem: String,
    /// A private key (written readable by its owner only).
    pub secret: bool,
}

/// A new CA and, for every `(name, host)`, a certificate for `host` (and
/// `name`) signed by it, usable as server and as client, valid for
/// `valid_days` from now. `members` are `name@host:port` as in
/// `cluster.members`.
pub fn issue(members: &[String], valid_days: u32) -> Result<Vec<Issued>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    if members.is_empty() {
        return Err("no members given (--members name@host:port,...)".into());
    }
    let listed = super::Members::parse_list(members)?;
    for (name, addr) in &listed {
        server_name(addr).map_err(|e| format!("member \"{name}@{addr}\": {e}"))?;
    }
    if !(1..=36_500).contains(&valid_days) {
        return Err(format!(
            "--valid-days {valid_days}: must be between 1 and 36500"
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_secs();
    let day = |days_from_epoch: u64| {
        let (y, m, d) = civil_from_days(days_from_epoch);
        rcgen::date_time_ymd(y, m, d)
    };
    let (from, until) = (day(now / 86_400 - 1), day(now / 86_400 + valid_days as u64));
    let failed = |what: &str, e: rcgen::Error| format!("{what}: {e}");

    let ca_key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "vpp cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (ca.not_before, ca.not_after) = (from, until);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| failed("CA certificate", e))?;
    let mut out = vec![
        Issued {
            file: "ca.crt".into(),
            pem: ca_cert.pem(),
            secret: false,
        },
        Issued {
            file: "ca.key".into(),
            pem: ca_key.serialize_pem(),
            secret: true,
        },
    ];
    let issuer = Issuer::new(ca, ca_key);
    for (name, addr) in &listed {
        let m = format!("{name}@{addr}");
        let host = host_of(addr)?;
        let mut names = vec![host.to_string()];
        if name != host && ServerName::try_from(name.to_string()).is_ok() {
            names.push(name.to_string());
        }
        let mut params =
            CertificateParams::new(names).map_err(|e| failed(&format!("member {m:?}"), e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        (params.not_before, params.not_after) = (from, until);
        let key = KeyPair::generate().map_err(|e| failed("member key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| failed(&format!("member {m:?}"), e))?;
        out.push(Issued {
            file: format!("{name}.crt"),
            pem: cert.pem(),
            secret: false,
        });
        out.push(Issued {
            file: format!("{name}.key"),
            pem: key.serialize_pem(),
            secret: true,
        });
    }
    Ok(out)
}

/// (year, month, day) of the day `days` after 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (i32, u8, u8) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Writes `issued` into `dir` (created if missing). Nothing is written when
/// any of the files already exists, and files this call wrote are removed
/// again if a later one fails; keys are made readable by their owner only.
pub fn write_issued(dir: &Path, issued: &[Issued]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(f) = issued.iter().find(|f| dir.join(&f.file).exists()) {
        return Err(format!(
            "{} already exists; nothing was written (remove it, or choose another --out)",
            dir.join(&f.file).display()
        ));
    }
    let mut written = Vec::new();
    for f in issued {
        let path = dir.join(&f.file);
        if let Err(e) = write_new(&path, f) {
            for w in &written {
                let _ = std::fs::remove_file(w);
            }
            return Err(format!("{}: {e}; nothing was kept", path.display()));
        }
        written.push(path);
    }
    Ok(())
}

/// Creates `path` (it must not exist) holding `f`'s PEM text.
fn write_new(path: &Path, f: &Issued) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if f.secret { 0o600 } else { 0o644 });
    }
    std::io::Write::write_all(&mut opts.open(path)?, f.pem.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_413), (2025, 11, 21));
    }

    fn files(dir: &Path, member: &str) -> ClusterTlsConfig {
        ClusterTlsConfig {
            cert: dir.join(format!("{member}.crt")),
            key: dir.join(format!("{member}.key")),
            ca: dir.join("ca.crt"),
        }
    }

    #[tokio::test]
    async fn issued_certificates_make_a_mutual_tls_session_and_strangers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let members = [
            "n1@127.0.0.1:7070".to_string(),
            "n2@localhost:7072".to_string(),
        ];
        write_issued(dir.path(), &issue(&members, 30).unwrap()).unwrap();
        let err = write_issued(dir.path(), &issue(&members, 30).unwrap()).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        // A file that cannot be written midway: the ones before it go again.
        let partial = tempfile::tempdir().unwrap();
        let mut set = issue(&members, 30).unwrap();
        set[3].file = "missing-dir/n1.key".into();
        let err = write_issued(partial.path(), &set).unwrap_err();
        assert!(err.contains("nothing was kept"), "{err}");
        assert_eq!(std::fs::read_dir(partial.path()).unwrap().count(), 0);
        let n1 = Tls::load(&files(dir.path(), "n1")).unwrap().unwrap();
        let n2 = Tls::load(&files(dir.path(), "n2")).unwrap().unwrap();
        let other = tempfile::tempdir().unwrap();
        write_issued(other.path(), &issue(&members, 30).unwrap()).unwrap();
        let stranger = Tls::load(&files(other.path(), "n2")).unwrap().unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tls_listener = TlsListener::new(listener, n1.acceptor(), "test");
        let server = tokio::spawn(async move {
            use axum::serve::Listener;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = tls_listener.accept().await;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.flush().await.unwrap();
            tls_listener
        });
        let before = handshakes_failed();
        // A peer that connects and never says a word holds nobody up.
        let _silent = TcpStream::connect(addr).await.unwrap();
        // A certificate from another CA: the server refuses it.
        let mut refused = stranger.connect(&addr.to_string()).await;
        if let Ok(s) = refused.as_mut() {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"hello").await;
            let mut buf = [0u8; 5];
            assert!(s.read_exact(&mut buf).await.is_err());
        }
        // n1's certificate names 127.0.0.1, reached as such: accepted.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = n2.connect(&addr.to_string()).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        let _listening = server.await.unwrap();
        for _ in 0..100 {
            if handshakes_failed() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            handshakes_failed() > before,
            "the refused handshake is counted"
        );
        // The same server reached under a name its certificate lacks.
        let e = n2
            .connect(&format!("localhost:{}", addr.port()))
            .await
            .unwrap_err();
        assert!(e.contains("TLS handshake failed"), "{e}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let members = ["n1@127.0.0.1:7070".to_string()];
        write_issued(dir.path(), &issue(&members, 30).unwrap()).unwrap();
        let mut cfg = files(dir.path(), "n1");
        cfg.ca = dir.path().join("missing.crt");
        let e = Tls::load(&cfg).unwrap_err();
        assert!(
            e.contains("cluster.tls.ca") && e.contains("missing.crt"),
            "{e}"
        );
        let mut cfg = files(dir.path(), "n1");
        cfg.key = dir.path().join("n1.crt");
        let e = Tls::load(&cfg).unwrap_err();
        assert!(e.contains("cluster.tls.key"), "{e}");
        let mut cfg = files(dir.path(), "n1");
        cfg.cert = dir.path().join("n1.key");
        let e = Tls::load(&cfg).unwrap_err();
        assert!(
            e.contains("cluster.tls.cert") && e.contains("CERTIFICATE"),
            "{e}"
        );
        let mut cfg = files(dir.path(), "n1");
        cfg.key = dir.path().join("ca.key");
        let e = Tls::load(&cfg).unwrap_err();
        assert!(e.contains("do not make a usable pair"), "{e}");
        for bad in [
            &[][..],
            &["n1".to_string()][..],
            &["n1@nohost".to_string()][..],
        ] {
            assert!(issue(bad, 30).is_err());
        }
        assert!(issue(&members, 0).is_err());
    }
}
