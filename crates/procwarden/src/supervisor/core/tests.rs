//! The name index (first children are found through the definition's index, children added at
//! run time through the supervisor's own, and a slot key reused after a removal must not make a
//! removed first child reappear), and the size of the core's messages.

use std::convert::Infallible;

use crate::supervisor::{ChildSpec, Context, Supervisor, SupervisorError};

fn waiting(name: &str) -> ChildSpec {
    ChildSpec::new(name, |ctx: Context| async move {
        ctx.shutdown_requested().await;
        Ok::<(), Infallible>(())
    })
}

fn names(status: &crate::supervisor::ChildStatus) -> Vec<String> {
    status.children.iter().map(|c| c.name.to_string()).collect()
}

#[tokio::test]
async fn first_children_can_be_removed_added_again_and_their_keys_reused() {
    let supervisor = Supervisor::builder("root")
        .dynamic()
        .children([waiting("a"), waiting("b")])
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();

    let duplicate = handle.add(waiting("b")).await;
    assert!(matches!(
        duplicate,
        Err(SupervisorError::DuplicateName { .. })
    ));

    handle.remove("a").await.unwrap();
    assert!(matches!(
        handle.remove("a").await,
        Err(SupervisorError::NoSuchChild { .. })
    ));
    // Takes the key "a" had; "a" must stay gone, and "b" found.
    handle.add(waiting("c")).await.unwrap();
    assert!(matches!(
        handle.restart("a").await,
        Err(SupervisorError::NoSuchChild { .. })
    ));
    handle.restart("b").await.unwrap();
    handle.restart("c").await.unwrap();

    // Added again, "a" is found through the supervisor's own index.
    handle.add(waiting("a")).await.unwrap();
    let status = handle.status().await.unwrap();
    assert_eq!(names(&status), ["b", "c", "a"]);
    handle.remove("a").await.unwrap();
    handle.remove("c").await.unwrap();
    assert_eq!(names(&handle.status().await.unwrap()), ["b"]);

    handle.shutdown();
    running.await.unwrap().unwrap();
}

/// Every message is as large as the largest variant, and a pool stops with one exit message per
/// child: the big payloads travel boxed.
#[test]
fn a_message_is_no_larger_than_an_exit_report() {
    let exit = std::mem::size_of::<(usize, u64, crate::supervisor::ExitReason)>();
    assert!(
        std::mem::size_of::<super::Msg>() <= exit + std::mem::size_of::<usize>(),
        "Msg is {} bytes, an exit report {exit}",
        std::mem::size_of::<super::Msg>()
    );
}
