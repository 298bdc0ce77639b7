//! LDAP check, as ldirectord's: a base-scope search of `base` with `filter`, anonymous
//! or after a simple bind, up when the server returns the entry. ldap3 speaks the
//! protocol over a connection made here, so it leaves from the checker's chosen source.

use std::net::{IpAddr, SocketAddr};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, StdStream};

use crate::config::{LdapBind, LdapCheck};

pub async fn check(
    addr: SocketAddr,
    from: Option<IpAddr>,
    spec: &LdapCheck,
) -> Result<String, String> {
    // Read before connecting: a missing password file is the director's fault, and the
    // message should say so rather than blame the real.
    let password = match &spec.bind {
        Some(bind) => Some(password(bind).await?),
        None => None,
    };
    let stream = super::connect(addr, from).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let stream = stream.into_std().map_err(|e| format!("connect {addr}: {e}"))?;
    let settings = LdapConnSettings::new().set_std_stream(StdStream::Tcp(stream));
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &format!("ldap://{addr}"))
        .await
        .map_err(|e| format!("LDAP session with {addr}: {e}"))?;
    let entry =
        if spec.base.is_empty() { "the root DSE".into() } else { format!("{:?}", spec.base) };
    let ask = async {
        if let (Some(bind), Some(password)) = (&spec.bind, &password) {
            ldap.simple_bind(&bind.dn, password)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {:?}: {e}", bind.dn))?;
        }
        // "1.1": no attributes; the entry's presence is the answer.
        let found = ldap
            .search(&spec.base, Scope::Base, &spec.filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("search of {entry}: {e}"))?;
        match found.0.len() {
            0 => Err(format!("search of {entry} with {} found no entry", spec.filter)),
            _ => Ok(format!("found {entry} with {}", spec.filter)),
        }
    };
    // The connection is driven only while the operations run: dropping both ends it,
    // also when the checker's timeout drops this whole probe. The operations first: a
    // session the server ends after answering has still answered.
    let drive = conn.drive();
    tokio::pin!(drive);
    let result = tokio::select! {
        biased;
        result = ask => result,
        ended = &mut drive => Err(match ended {
            Ok(()) => format!("{addr} closed the LDAP session"),
            Err(e) => format!("LDAP session with {addr}: {e}"),
        }),
    };
    // A polite end, outside the verdict: the server closing at once after it (which may
    // end the driver first) says nothing of its health.
    tokio::select! {
        _ = ldap.unbind() => {}
        _ = &mut drive => {}
    }
    result
}

/// The bind password: the file's content less its line end.
async fn password(bind: &LdapBind) -> Result<String, String> {
    let text = tokio::fs::read_to_string(&bind.password_file)
        .await
        .map_err(|e| format!("password_file {}: {e}", bind.password_file.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}
