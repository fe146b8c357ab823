use super::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn error_json_shape() {
    let err = PluginError::Args(ArgsError::Missing(vec!["CNI_NETNS"]));
    let json = err.to_json("1.0.0");
    assert_eq!(
        serde_json::to_string(&json).unwrap(),
        r#"{"cniVersion":"1.0.0","code":4,"msg":"invalid CNI environment","details":"required environment variables missing: CNI_NETNS"}"#
    );
}

#[test]
fn codes() {
    let transient = PluginError::Event(EventError::Timeout {
        path: PathBuf::from("/run/x/pluginevent.sock"),
        after: Duration::from_secs(5),
    });
    assert_eq!(transient.code(), TRY_AGAIN_LATER);
    let refused = PluginError::Event(EventError::Rejected {
        path: PathBuf::from("/run/x/pluginevent.sock"),
        status: http::StatusCode::INTERNAL_SERVER_ERROR,
        body: "no".into(),
    });
    assert_eq!(refused.code(), AGENT_REFUSED);
    assert!(refused.details().contains("500"), "{}", refused.details());
    assert_eq!(
        PluginError::PrevResult(ResultError::UnsupportedVersion("0.2.0".into())).code(),
        INCOMPATIBLE_VERSION
    );
    assert_eq!(
        PluginError::PrevResult(ResultError::NotAnObject).code(),
        DECODE_FAILURE
    );
    assert_eq!(
        PluginError::UnsupportedVersion {
            version: "9.9.9".into()
        }
        .code(),
        INCOMPATIBLE_VERSION
    );
    assert_eq!(
        PluginError::Args(ArgsError::UnknownCommand("X".into())).code(),
        INVALID_ENVIRONMENT
    );
}

#[test]
fn details_follow_the_cause_chain_once() {
    let io = io::Error::new(io::ErrorKind::NotFound, "no such file");
    let err = PluginError::Event(EventError::Connect {
        path: PathBuf::from("/run/x/pluginevent.sock"),
        source: io,
    });
    let details = err.details();
    assert!(details.contains("/run/x/pluginevent.sock"), "{details}");
    assert_eq!(details.matches("no such file").count(), 1, "{details}");
}
