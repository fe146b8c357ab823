use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn api_error(code: u16, reason: &str) -> kube::Error {
    let status: kube::core::Status =
        serde_json::from_value(serde_json::json!({"code": code, "reason": reason, "message": "m"}))
            .unwrap();
    kube::Error::Api(Box::new(status))
}

#[test]
fn present_daemonset_is_an_upgrade() {
    let (action, _) = decide(&Ok(DaemonSet::default()));
    assert_eq!(action, ShutdownAction::KeepForUpgrade);
}

#[test]
fn deleting_gone_revoked_or_unknown_uninstall() {
    let mut ds = DaemonSet::default();
    ds.metadata.deletion_timestamp = Some(Time(Default::default()));
    assert_eq!(
        decide(&Ok(ds)),
        (ShutdownAction::Uninstall, Reason::DaemonSetDeleting)
    );
    assert_eq!(
        decide(&Err(api_error(404, "NotFound"))),
        (ShutdownAction::Uninstall, Reason::DaemonSetGone)
    );
    assert_eq!(
        decide(&Err(api_error(401, "Unauthorized"))),
        (ShutdownAction::Uninstall, Reason::CredentialsRevoked)
    );
    assert_eq!(
        decide(&Err(api_error(500, "InternalError"))).0,
        ShutdownAction::Uninstall
    );
}
