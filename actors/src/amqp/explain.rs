//! lapin's failures in words a user can act on.
//!
//! RabbitMQ answers a refused login, a missing vhost or an exchange of another type with
//! an AMQP error code and a terse text (`ACCESS_REFUSED - Login was refused using
//! authentication mechanism PLAIN`); lapin passes both on. [`classify`] decides from the
//! code whether another attempt may succeed, and says what to fix; [`login`] adds the
//! server and user for a failure while connecting. The original text goes to the debug log.

use lapin::ErrorKind;

use crate::error::ProduceError;

/// AMQP reply code: the user may not do this (a wrong password at login; no permission
/// on an exchange later).
const ACCESS_REFUSED: u16 = 403;
/// AMQP reply code: the exchange exists with other settings (its type, durability).
const PRECONDITION_FAILED: u16 = 406;
/// AMQP reply code: the connection may not go on (no such vhost, no access to it, a
/// connection limit reached).
const NOT_ALLOWED: u16 = 530;

/// The AMQP reply code and text of a protocol error; `None` for other failures.
fn reply(error: &lapin::Error) -> Option<(u16, String)> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => {
            Some((amqp.get_id(), amqp.get_message().as_str().to_owned()))
        }
        _ => None,
    }
}

/// Maps a lapin failure to a [`ProduceError`], in words that say what to fix.
///
/// Soft protocol errors are the broker's answer about what was asked (access refused,
/// an exchange of another type): final. Other failures, a missing vhost among them, are
/// about reaching the broker, and another attempt may succeed.
pub(crate) fn classify(error: &lapin::Error) -> ProduceError {
    let Some((code, text)) = reply(error) else {
        return ProduceError::Unavailable(error.to_string());
    };
    log::debug!(code = code; "RabbitMQ said: {error}");
    match code {
        ACCESS_REFUSED => ProduceError::Rejected(format!(
            "RabbitMQ refused access ({text}): give the user write and configure permission \
             on the exchange (rabbitmqctl set_permissions)"
        )),
        PRECONDITION_FAILED => ProduceError::Rejected(format!(
            "{text}: the exchange exists with other settings; use its type, or another \
             exchange name"
        )),
        // Not final: a vhost can be missing for a while (a node reset and rejoining, its
        // definitions being restored), and messages for it are spooled meanwhile.
        NOT_ALLOWED if text.contains("not found") => ProduceError::Unavailable(format!(
            "{text}: create the vhost, or fix the URL's path (%2f is the vhost /)"
        )),
        _ if error.is_amqp_soft_error() => ProduceError::Rejected(error.to_string()),
        _ => ProduceError::Unavailable(error.to_string()),
    }
}

/// A failure to open a connection to `server` as `user`: a refused login says whose and
/// where to fix the password; anything else is [`classify`]'s.
pub(crate) fn login(error: &lapin::Error, server: &str, user: &str) -> ProduceError {
    match reply(error) {
        Some((ACCESS_REFUSED, _)) => {
            log::debug!(server = server; "RabbitMQ said: {error}");
            ProduceError::Rejected(format!(
                "RabbitMQ at {server} refused the login of user {user:?}: check its password \
                 (the route's password_file, or the URL's)"
            ))
        }
        _ => classify(error),
    }
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    use super::*;

    fn protocol(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn a_refused_login_names_the_user_and_the_password_file() {
        let refused = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
        );
        let ProduceError::Rejected(text) = login(&refused, "mq1:5672", "ferry") else {
            panic!("a refused login is final");
        };
        assert!(
            text.starts_with("RabbitMQ at mq1:5672 refused the login of user \"ferry\""),
            "{text}"
        );
    }

    #[test]
    fn a_missing_vhost_says_how_to_fix_it_and_is_retried() {
        let missing = protocol(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - vhost nosuch not found",
        );
        let ProduceError::Unavailable(text) = classify(&missing) else {
            panic!("a missing vhost may come back: retried, spooled");
        };
        assert!(text.contains("create the vhost"), "{text}");
        // A connection limit is NOT_ALLOWED too, and passes.
        let limit = protocol(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - access to vhost '/' refused for user 'u': connection limit (1) is reached",
        );
        assert!(classify(&limit).is_retriable());
    }

    #[test]
    fn an_exchange_of_another_type_says_so() {
        let other = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'e' in vhost '/': \
             received 'topic' but current is 'direct'",
        );
        let ProduceError::Rejected(text) = classify(&other) else {
            panic!("final");
        };
        assert!(
            text.ends_with("use its type, or another exchange name"),
            "{text}"
        );
    }
}
