//! `/logging` on the admin port: read or change the log filter of the running tunnel, as
//! ztunnel's endpoint does (what `istioctl ztunnel-config log` calls). `GET` or `POST`
//! without arguments answers `current log level is <filter>`; `POST ?level=<clauses>` adds
//! the clauses (`debug`, `access=warn,hickory=off`) to the current filter, `?reset` first goes
//! back to the start-up filter (`RUST_LOG`). A bad value is a 400 naming the bad clause, and
//! changes nothing. A change is a `POST` only, so nothing that merely follows a link can
//! change it.

use http::{Method, StatusCode};
use nodetunnel_base::logging::{self, FilterError};

const USAGE: &str = "usage: GET|POST /logging (current filter); POST /logging?level=<level> \
                     (add: off|error|warn|info|debug|trace, or target=level, comma-separated); \
                     POST /logging?reset[&level=...] (back to the start-up filter first)";

/// What the request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Show,
    Change { reset: bool, level: String },
}

/// Reads `level` and `reset` from the query; any other parameter is refused (a typo such as
/// `levle=debug` must not read as "show").
fn parse_query(query: Option<&str>) -> Result<Request, String> {
    let mut level = None;
    let mut reset = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "level" => level = Some(value.into_owned()),
            "reset" => reset = true,
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(match (reset, level) {
        (false, None) => Request::Show,
        (reset, level) => Request::Change {
            reset,
            level: level.unwrap_or_default(),
        },
    })
}

/// The status and plain-text body of a `/logging` request.
pub fn handle(method: &Method, query: Option<&str>) -> (StatusCode, String) {
    let Some(control) = logging::control() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "logging was not set up through nodetunnel_base::logging::init\n".into(),
        );
    };
    let request = match parse_query(query) {
        Ok(request) => request,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n{USAGE}\n")),
    };
    let answer = match (method, request) {
        (&Method::GET | &Method::POST, Request::Show) => control.current(),
        (&Method::POST, Request::Change { reset, level }) => control.apply(reset, &level),
        (&Method::GET, Request::Change { .. }) => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                format!("changing the log filter needs POST\n{USAGE}\n"),
            )
        }
        (other, _) => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {other} not allowed\n{USAGE}\n"),
            )
        }
    };
    match answer {
        Ok(filter) => (StatusCode::OK, format!("current log level is {filter}\n")),
        Err(e @ FilterError::Reload(_)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("invalid level: {e}\n{USAGE}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_says_show_or_change() {
        assert_eq!(parse_query(None), Ok(Request::Show));
        assert_eq!(parse_query(Some("")), Ok(Request::Show));
        assert_eq!(
            parse_query(Some("level=access%3Ddebug%2Cinfo")),
            Ok(Request::Change {
                reset: false,
                level: "access=debug,info".into()
            })
        );
        assert_eq!(
            parse_query(Some("reset")),
            Ok(Request::Change {
                reset: true,
                level: String::new()
            })
        );
        assert_eq!(
            parse_query(Some("levle=debug")),
            Err("unknown parameter \"levle\"".into())
        );
    }
}
