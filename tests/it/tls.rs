//! TLS in the process, with certificates made here (rcgen): a client certificate from the
//! configured CA is served; none, or one from another CA, fails the handshake, is counted and
//! publishes nothing; a renewed certificate on disk is served to new connections while an open
//! keep-alive connection goes on. Against a real nats-server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedKey, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::common::nats::{start_bridge, NatsServer};
use crate::common::*;
use crate::trust::{answers, request};

/// A certificate authority that signs server and client certificates.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> CertifiedKey {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        CertifiedKey {
            cert,
            key_pair: key,
        }
    }

    fn server(&self) -> CertifiedKey {
        self.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A TLS server configuration with a certificate for `name` (a host name or an address).
    pub(crate) fn acceptor(&self, name: &str) -> tokio_rustls::TlsAcceptor {
        let issued = self.issue(name, ExtendedKeyUsagePurpose::ServerAuth);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![issued.cert.der().clone()],
                PrivateKeyDer::try_from(issued.key_pair.serialize_der()).unwrap(),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    fn client(&self) -> CertifiedKey {
        self.issue("tencent-callback", ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Writes a file the way Kubernetes and cert-manager do: a new file renamed into place.
fn replace(path: &Path, contents: &str) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, contents).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn new(server: &CertifiedKey, client_ca: &Ca) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            ca: dir.path().join("ca.crt"),
            _dir: dir,
        };
        files.install(server);
        std::fs::write(&files.ca, client_ca.cert.pem()).unwrap();
        files
    }

    fn install(&self, server: &CertifiedKey) {
        replace(&self.key, &server.key_pair.serialize_pem());
        replace(&self.cert, &server.cert.pem());
    }

    fn flags(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
        vec![
            "--tls-cert".into(),
            path(&self.cert),
            "--tls-key".into(),
            path(&self.key),
            "--tls-client-ca".into(),
            path(&self.ca),
        ]
    }
}

/// A TLS connection that trusts `server_ca`, presenting `client` when given.
async fn connect(
    addr: std::net::SocketAddr,
    server_ca: &Ca,
    client: Option<&CertifiedKey>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(client) => builder
            .with_client_auth_cert(
                vec![client.cert.der().clone()],
                PrivateKeyDer::try_from(client.key_pair.serialize_der()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Sends one group message on `stream`; its answer's status, `None` when the connection
/// failed or ended without one.
async fn send(stream: &mut TlsStream<TcpStream>, group: &str) -> Option<u16> {
    let body = group_message(group, 1);
    let sent = stream
        .write_all(&request(&query("Group.CallbackAfterSendMsg"), &body))
        .await;
    if sent.is_err() {
        return None;
    }
    answers(stream, 1)
        .await
        .0
        .first()
        .map(|(status, _)| *status)
}

fn served_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_certificate_from_the_configured_ca_is_served() {
    let nats = NatsServer::start();
    let (server_ca, tencent_ca, other_ca) = (Ca::new("server"), Ca::new("tencent"), Ca::new("x"));
    let files = Files::new(&server_ca.server(), &tencent_ca);
    let mut flags = vec!["--sdkappid".to_owned(), "1400000000".to_owned()];
    flags.extend(files.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bridge = start_bridge(&nats, &flags).await;

    let mut good = connect(bridge.addr(), &server_ca, Some(&tencent_ca.client()))
        .await
        .unwrap();
    assert_eq!(send(&mut good, "@TGS#mtls").await, Some(200));

    // TLS 1.3: the client finishes its side before the server checks the certificate, so the
    // failure shows as a connection ended without an answer.
    for (client, group) in [
        (None, "@TGS#no-cert"),
        (Some(other_ca.client()), "@TGS#other-ca"),
    ] {
        let answered = match connect(bridge.addr(), &server_ca, client.as_ref()).await {
            Ok(mut stream) => send(&mut stream, group).await,
            Err(_) => None,
        };
        assert_eq!(answered, None, "{group} must not be served");
    }
    // Plain HTTP on the TLS port is no request either.
    let answer = Http::default()
        .try_request(
            "POST",
            bridge.addr(),
            &format!("/callback?{}", query("Group.CallbackAfterSendMsg")),
            group_message("@TGS#plain", 1),
        )
        .await;
    assert!(answer.is_err(), "answered {:?}", answer.map(|a| a.status));

    let admin = bridge.admin_addr();
    let text = eventually(Duration::from_secs(5), "refusals counted", || async move {
        let (_, text) = Http::default().admin(admin, "/metrics").await;
        let refused = |reason: &str| {
            metric(
                &text,
                &format!("timbridge_connections_refused_total{{reason=\"{reason}\"}}"),
            )
        };
        (refused("tls_no_client_certificate") == 1.0
            && refused("tls_bad_client_certificate") == 1.0
            && refused("tls_handshake") == 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        metric(
            &text,
            "timbridge_callbacks_total{command=\"Group.CallbackAfterSendMsg\",outcome=\"ok\"}"
        ),
        1.0
    );
    let stored = nats.reader().await.all("TIM").await;
    let groups: Vec<&str> = stored
        .iter()
        .map(|m| m.header("tim-group-id").unwrap())
        .collect();
    assert_eq!(groups, ["@TGS#mtls"]);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_connections_and_open_ones_go_on() {
    let nats = NatsServer::start();
    let (server_ca, tencent_ca) = (Ca::new("server"), Ca::new("tencent"));
    let first = server_ca.server();
    let files = Files::new(&first, &tencent_ca);
    let mut flags = vec![
        "--sdkappid".to_owned(),
        "1400000000".to_owned(),
        "--tls-reload-interval".to_owned(),
        "100ms".to_owned(),
    ];
    flags.extend(files.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bridge = start_bridge(&nats, &flags).await;
    let client = tencent_ca.client();

    let mut open = connect(bridge.addr(), &server_ca, Some(&client))
        .await
        .unwrap();
    assert_eq!(send(&mut open, "@TGS#before").await, Some(200));
    assert_eq!(served_certificate(&open), *first.cert.der());

    let renewed = server_ca.server();
    files.install(&renewed);
    let (addr, admin) = (bridge.addr(), bridge.admin_addr());
    eventually(
        Duration::from_secs(5),
        "the renewed certificate served",
        || {
            let (server_ca, client, renewed) = (&server_ca, &client, &renewed);
            async move {
                let stream = connect(addr, server_ca, Some(client)).await.ok()?;
                (served_certificate(&stream) == *renewed.cert.der()).then_some(())
            }
        },
    )
    .await;
    // The connection opened before the renewal keeps its session.
    assert_eq!(send(&mut open, "@TGS#after").await, Some(200));

    // A broken file is not used: new connections still get the renewed certificate.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let text = eventually(
        Duration::from_secs(5),
        "the failed reload counted",
        || async move {
            let (_, text) = Http::default().admin(admin, "/metrics").await;
            (metric(&text, "timbridge_tls_reloads_total{result=\"failed\"}") >= 1.0).then_some(text)
        },
    )
    .await;
    assert!(metric(&text, "timbridge_tls_reloads_total{result=\"ok\"}") >= 1.0);
    let mut fresh = connect(bridge.addr(), &server_ca, Some(&client))
        .await
        .unwrap();
    assert_eq!(served_certificate(&fresh), *renewed.cert.der());
    assert_eq!(send(&mut fresh, "@TGS#still").await, Some(200));

    assert_eq!(nats.reader().await.count("TIM").await, 3);
    bridge.shutdown().await;
}

/// A certificate and key that do not make a configuration stop the start-up with the flag's
/// name.
#[tokio::test]
async fn unusable_tls_files_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, "nothing").unwrap();
    std::fs::write(&key, Ca::new("x").server().key_pair.serialize_pem()).unwrap();
    let config = config(&[
        "--sdkappid",
        "1",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let err = match timbridge::Bridge::start(config).await {
        Ok(_) => panic!("started with no certificate"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("--tls-cert"), "{err}");
}
