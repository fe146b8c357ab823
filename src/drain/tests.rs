use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[tokio::test]
async fn finished_tasks_drain_at_once() {
    let tasks = ConnectionTasks::new();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    tasks.spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        d.store(true, Ordering::SeqCst);
    });
    assert_eq!(tasks.len(), 1);
    let outcome = tasks.drain(Duration::from_secs(10)).await;
    assert_eq!(outcome, DrainOutcome { cut: 0 });
    assert!(
        done.load(Ordering::SeqCst),
        "drain returned before the task ended"
    );
    assert!(tasks.is_empty());
}

#[tokio::test]
async fn stuck_tasks_are_cut_at_the_deadline() {
    let tasks = ConnectionTasks::new();
    // A guard dropped when the task is cut: proves the future was really dropped.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = Dropped(dropped.clone());
    tasks.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    });
    let outcome = tasks.drain(Duration::from_millis(50)).await;
    assert_eq!(outcome, DrainOutcome { cut: 1 });
    assert!(dropped.load(Ordering::SeqCst));
    assert!(tasks.is_empty());
}

#[tokio::test]
async fn draining_signal_lets_multiplexed_connections_wind_down() {
    let tasks = ConnectionTasks::new();
    let draining = tasks.draining();
    // A connection that closes itself once told to drain.
    tasks.spawn(draining);
    let outcome = tasks.drain(Duration::from_secs(10)).await;
    assert_eq!(outcome.cut, 0);
}
