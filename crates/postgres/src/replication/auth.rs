//! Authentication of a new connection: SCRAM-SHA-256(-PLUS) with channel binding, md5 and
//! cleartext passwords (the latter only where the transport protects them), and the server's
//! refusals turned into errors that say what to change.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::{backend, frontend};
use zeroize::Zeroizing;

use super::{ReplicationConnection, ServerError, Socket};
use crate::error::{PgError, Result};
use crate::tls::{ChannelBindingMode, Verification};

impl ReplicationConnection {
    pub(super) fn authenticate(&mut self, replication: bool) -> Result<()> {
        let user = self.cfg.user.clone();
        let map_err = |e: ServerError| -> PgError {
            let m = e.message.clone();
            match e.code.as_str() {
                "28P01" => PgError::Auth {
                    user: user.clone(),
                    message: m,
                },
                "28000" if m.contains("pg_hba.conf") => PgError::NotAllowedByHba {
                    user: user.clone(),
                    message: m,
                },
                "28000" if m.contains("does not exist") => PgError::Auth {
                    user: user.clone(),
                    message: m,
                },
                "42501" => PgError::NoReplicationPrivilege {
                    user: user.clone(),
                    message: m,
                },
                "53300" if m.contains("max_wal_senders") || replication => {
                    PgError::NoWalSenders { message: m }
                }
                _ => e.into_error(),
            }
        };
        let verified = self
            .tls
            .as_ref()
            .is_some_and(|t| t.verified != Verification::None);
        let binding = self
            .cfg
            .channel_binding_for(self.tls.is_some(), verified, self.local);
        let addr = self.cfg.address();
        let insecure = |message: String| PgError::Insecure {
            addr: addr.clone(),
            message,
        };
        let require_binding = |what: &str| {
            insecure(format!(
                "the server {what}, but channel_binding=require accepts only SCRAM-SHA-256-PLUS \
                 (with sslmode=require and no sslrootcert, channel binding is the only proof that \
                 no one sits in the middle): give sslrootcert=CA.pem with sslmode=verify-full, or \
                 use scram-sha-256 in pg_hba.conf and ssl = on"
            ))
        };
        let mut scram: Option<ScramSha256> = None;
        let mut mechanism = "trust";
        let mut scram_verified = false;
        loop {
            let frame = self.read_frame_blocking()?;
            if frame.tag == b'E' {
                if let backend::Message::ErrorResponse(body) = Self::parse(frame)? {
                    return Err(map_err(ServerError::from_body(&body)));
                }
                return Err(PgError::Protocol("bad error response".into()));
            }
            match Self::parse(frame)? {
                backend::Message::AuthenticationOk => {
                    if scram.is_some() && !scram_verified {
                        return Err(PgError::Protocol(
                            "the server said the password was right without proving that it \
                             knows it (SCRAM's final message was skipped): is this the real \
                             server?"
                                .into(),
                        ));
                    }
                    if binding == ChannelBindingMode::Require
                        && mechanism != SCRAM_SHA_256_PLUS
                    {
                        return Err(require_binding(&format!(
                            "accepted the connection with {mechanism} authentication"
                        )));
                    }
                    self.authentication = mechanism;
                }
                backend::Message::AuthenticationCleartextPassword => {
                    if binding == ChannelBindingMode::Require {
                        return Err(require_binding("asks for the password in clear"));
                    }
                    if !(self.local || verified) {
                        return Err(insecure(format!(
                            "the server asks for the password in clear over {}, where it could \
                             be read on the way: use scram-sha-256 in pg_hba.conf, or connect \
                             with sslmode=verify-full sslrootcert=CA.pem",
                            if self.tls.is_some() {
                                "a TLS connection whose certificate is not verified"
                            } else {
                                "an unencrypted network connection"
                            }
                        )));
                    }
                    mechanism = "password";
                    let pw = self.password()?;
                    frontend::password_message(pw.as_bytes(), &mut self.out)?;
                    self.send()?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    if binding == ChannelBindingMode::Require {
                        return Err(require_binding("asks for an md5 password"));
                    }
                    mechanism = "md5";
                    let pw = self.password()?;
                    let hashed = Zeroizing::new(postgres_protocol::authentication::md5_hash(
                        self.cfg.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    ));
                    frontend::password_message(hashed.as_bytes(), &mut self.out)?;
                    self.send()?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let (mut plain, mut plus) = (false, false);
                    while let Ok(Some(m)) = mechs.next() {
                        plain |= m == SCRAM_SHA_256;
                        plus |= m == SCRAM_SHA_256_PLUS;
                    }
                    // The tls-server-end-point binding: the hash of the certificate that spoke.
                    let end_point = match &self.socket {
                        Socket::Tls(s) if plus && binding != ChannelBindingMode::Disable => s
                            .conn
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::tls::server_end_point(c)),
                        _ => None,
                    };
                    let (name, channel) = match end_point {
                        Some(hash) => (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash),
                        ),
                        None if binding == ChannelBindingMode::Require => {
                            return Err(require_binding(if plus {
                                "offers SCRAM-SHA-256-PLUS with a certificate whose signature \
                                 names no hash to bind to (Ed25519/Ed448)"
                            } else {
                                "does not offer SCRAM-SHA-256-PLUS"
                            }))
                        }
                        // TLS and no PLUS offered: "y" tells a server that does support
                        // channel binding that someone removed it from the list.
                        None if plain
                            && self.tls.is_some()
                            && !plus
                            && binding != ChannelBindingMode::Disable =>
                        {
                            (SCRAM_SHA_256, ChannelBinding::unrequested())
                        }
                        None if plain => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                        None => {
                            return Err(PgError::Protocol(
                                "the server offers no SASL mechanism this client knows \
                                 (SCRAM-SHA-256, SCRAM-SHA-256-PLUS over TLS)"
                                    .into(),
                            ))
                        }
                    };
                    mechanism = name;
                    let pw = self.password()?;
                    let s = ScramSha256::new(pw.as_bytes(), channel);
                    frontend::sasl_initial_response(name, s.message(), &mut self.out)?;
                    self.send()?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::Protocol("SASL continue before start".into()))?;
                    s.update(body.data()).map_err(|e| PgError::Protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.out)?;
                    self.send()?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::Protocol("SASL final before start".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        PgError::Protocol(format!(
                            "SCRAM: the server's proof does not verify ({e}): is this the real server?"
                        ))
                    })?;
                    scram_verified = true;
                }
                backend::Message::ParameterStatus(body) => {
                    if let (Ok(n), Ok(v)) = (body.name(), body.value()) {
                        self.parameters.push((n.to_string(), v.to_string()));
                    }
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                _ => {
                    return Err(PgError::Protocol(
                        "unsupported authentication request (only SCRAM-SHA-256, md5, password and trust are supported)".into(),
                    ))
                }
            }
        }
    }

    fn password(&self) -> Result<Zeroizing<String>> {
        self.cfg.password.clone().ok_or_else(|| PgError::Auth {
            user: self.cfg.user.clone(),
            message: "the server asks for a password and none was given".into(),
        })
    }
}
