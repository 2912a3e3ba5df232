//! The ingress's gate: every gRPC call is identified (a bearer token or a client
//! certificate) before a service sees it, and refused calls are logged within a budget.
//! What a caller may do once identified is decided by [`crate::config::allowlist`] (the
//! targets) and [`crate::config::clients`] (each client's routes, targets and limits).

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use std::sync::Arc;

use crate::config::clients::Client;

/// The client a call was identified as, carried in the request's extensions from the
/// interceptor to the service.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Client>);

/// Checks the `authorization: Bearer <token>` header of every ingress call when a token is
/// configured (compared in constant time).
#[derive(Clone)]
pub struct TokenCheck {
    /// Holds the expected token, if any (replaced by a reload).
    live: std::sync::Arc<crate::daemon::live::Live>,
    /// Bounds the log lines refused calls cause (any client can cause them).
    log: std::sync::Arc<crate::daemon::log_budget::LogBudget>,
}

impl TokenCheck {
    /// A check for the token `live` holds at each call (`None`: every call passes).
    pub fn new(live: std::sync::Arc<crate::daemon::live::Live>) -> Self {
        Self {
            live,
            log: std::sync::Arc::default(),
        }
    }

    /// Logs a refused call, within the log budget.
    fn refused(&self, why: &str) {
        if let Some(suppressed) = self.log.admit() {
            log::warn!(suppressed_before = suppressed; "Call refused: {why}");
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let auth = self.live.auth();
        if !auth.clients.is_empty() {
            // Per-client access: the call must identify as one client.
            let identified = peer_subject(&request).and_then(|subject| {
                auth.clients
                    .identify(subject.as_deref(), bearer(&request).map(str::as_bytes))
            });
            return match identified {
                Ok(client) => {
                    request.extensions_mut().insert(Caller(client));
                    Ok(request)
                }
                Err(why) => {
                    self.refused(&why);
                    Err(Status::unauthenticated(why))
                }
            };
        }
        let Some(expected) = auth.token.as_ref() else {
            return Ok(request);
        };
        let expected = expected.as_slice();
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match given {
            Some(given) if bool::from(given.as_bytes().ct_eq(expected)) => Ok(request),
            Some(_) => {
                self.refused("wrong bearer token");
                Err(Status::unauthenticated("wrong bearer token"))
            }
            None => {
                self.refused("no bearer token");
                Err(Status::unauthenticated(
                    "this daemon needs a bearer token (authorization: Bearer …)",
                ))
            }
        }
    }
}

/// The bearer token a call carries, if any.
fn bearer(request: &Request<()>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// The subject of the client certificate a call's connection presented (verified by the
/// TLS handshake against `server.tls_client_ca_file`), as x509-parser prints it, e.g.
/// `CN=nwp-jobs, O=Weather`; `None` without one. A subject that would not print
/// unambiguously — a value holding `,` `+` `=` `"` `\` `<` `>` `;` or a control character,
/// an attribute that is not a string, a multi-valued RDN, or one that does not parse — is
/// refused: another subject could print the same.
fn peer_subject(request: &Request<()>) -> Result<Option<String>, String> {
    let Some(der) = request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
    else {
        return Ok(None);
    };
    let refused = || "this client certificate's subject cannot be matched unambiguously".to_owned();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| refused())?;
    let subject = cert.subject();
    for rdn in subject.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err(refused());
        };
        let value = attribute.as_str().map_err(|_| refused())?;
        let unsafe_char =
            |c: char| c.is_control() || matches!(c, ',' | '+' | '=' | '"' | '\\' | '<' | '>' | ';');
        if value.is_empty() || value.chars().any(unsafe_char) {
            return Err(refused());
        }
    }
    Ok(Some(subject.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(check: &mut TokenCheck, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        check.call(request).map(drop).map_err(|s| s.code())
    }

    /// A check of the token `token`, held as a daemon holds it.
    fn check(token: Option<&str>) -> TokenCheck {
        let mut settings = crate::config::Config::default().validate().unwrap();
        settings.token = token.map(str::to_owned);
        TokenCheck::new(std::sync::Arc::new(crate::daemon::live::Live::new(
            &settings,
            String::new(),
        )))
    }

    #[test]
    fn the_token_is_required_when_configured() {
        let mut open = check(None);
        assert_eq!(call(&mut open, None), Ok(()));
        let mut guarded = check(Some("s3cret"));
        assert_eq!(call(&mut guarded, Some("Bearer s3cret")), Ok(()));
        let unauthenticated = Err(tonic::Code::Unauthenticated);
        assert_eq!(call(&mut guarded, None), unauthenticated);
        assert_eq!(call(&mut guarded, Some("Bearer s3cre")), unauthenticated);
        assert_eq!(call(&mut guarded, Some("s3cret")), unauthenticated);
    }
}
