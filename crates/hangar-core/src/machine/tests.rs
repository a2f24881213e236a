use super::*;
use proptest::prelude::*;

fn exit(code: i32) -> ExitInfo {
    ExitInfo {
        exit_code: code,
        exited_at_ms: 1,
        ..ExitInfo::default()
    }
}

fn at(state: MachineState, step: Step) -> Machine {
    Machine {
        state,
        step,
        restart_count: 0,
        launch: false,
    }
}

/// Runs a sequence of inputs, failing on any denial.
fn run(
    mut m: Machine,
    policy: &Policy,
    inputs: Vec<Input>,
) -> (Machine, Vec<EventRecord>, Vec<Effect>) {
    let mut events = Vec::new();
    let mut effects = Vec::new();
    for input in inputs {
        let t =
            apply(&m, policy, input.clone()).unwrap_or_else(|d| panic!("{input:?} denied: {d}"));
        m = t.machine;
        events.extend(t.events);
        effects.extend(t.effects);
    }
    (m, events, effects)
}

#[test]
fn launch_prepares_then_starts() {
    let p = Policy::default();
    let (m, events, effects) = run(
        Machine::new(true),
        &p,
        vec![
            Input::Resume(Observed::Absent),
            Input::Prepared,
            Input::WorkloadStarted,
        ],
    );
    assert_eq!(m.state, MachineState::Started);
    assert_eq!(effects, vec![Effect::PrepareImage, Effect::StartWorkload]);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].status),
        ("start", MachineState::Started)
    );
}

#[test]
fn skip_launch_settles_in_stopped() {
    let p = Policy::default();
    let (m, _, effects) = run(
        Machine::new(false),
        &p,
        vec![Input::Resume(Observed::Absent), Input::Prepared],
    );
    assert_eq!(m.state, MachineState::Stopped);
    assert_eq!(effects, vec![Effect::PrepareImage, Effect::Prewarm]);
}

#[test]
fn start_during_skip_launch_preparation_launches() {
    let p = Policy::default();
    let (m, _, effects) = run(
        Machine::new(false),
        &p,
        vec![
            Input::Resume(Observed::Absent),
            Input::Start,
            Input::Prepared,
        ],
    );
    assert_eq!(m.state, MachineState::Starting);
    assert_eq!(effects.last(), Some(&Effect::StartWorkload));
}

#[test]
fn pull_failure_fails_the_machine_with_the_reason() {
    let p = Policy::default();
    let (m, events, _) = run(
        Machine::new(true),
        &p,
        vec![
            Input::Resume(Observed::Absent),
            Input::PrepareFailed("manifest unknown".into()),
        ],
    );
    assert_eq!(m.state, MachineState::Failed);
    let e = events.last().unwrap();
    assert_eq!((e.kind, e.status), ("launch", MachineState::Failed));
    assert_eq!(e.message.as_deref(), Some("manifest unknown"));
}

#[test]
fn stop_signals_then_kills_on_timeout() {
    let p = Policy::default();
    let m = at(MachineState::Started, Step::Idle);
    let t = apply(
        &m,
        &p,
        Input::Stop {
            signal: None,
            timeout: None,
        },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Stopping);
    assert_eq!(
        t.effects,
        vec![
            Effect::Signal(Signal::Int),
            Effect::ArmTimer(Timer::StopTimeout, Duration::from_secs(5))
        ]
    );
    let t2 = apply(&t.machine, &p, Input::TimerFired(Timer::StopTimeout)).unwrap();
    assert_eq!(t2.effects, vec![Effect::Signal(Signal::Kill)]);
    let t3 = apply(&t2.machine, &p, Input::WorkloadExited(exit(137))).unwrap();
    assert_eq!(t3.machine.state, MachineState::Stopped);
    // Cleaned up first, then the next start is prepared.
    let cleanup = t3
        .effects
        .iter()
        .position(|e| *e == Effect::CleanupWorkload)
        .unwrap();
    let prewarm = t3
        .effects
        .iter()
        .position(|e| *e == Effect::Prewarm)
        .unwrap();
    assert!(cleanup < prewarm);
    let e = &t3.events[0];
    let x = e.exit.as_ref().unwrap();
    assert!(x.requested_stop && !x.restarting);
}

#[test]
fn stop_honours_signal_and_timeout_of_the_request() {
    let p = Policy::default();
    let m = at(MachineState::Started, Step::Idle);
    let t = apply(
        &m,
        &p,
        Input::Stop {
            signal: Some(Signal::Term),
            timeout: Some(Duration::from_secs(30)),
        },
    )
    .unwrap();
    assert_eq!(
        t.effects,
        vec![
            Effect::Signal(Signal::Term),
            Effect::ArmTimer(Timer::StopTimeout, Duration::from_secs(30))
        ]
    );
}

#[test]
fn on_failure_restarts_until_max_retries() {
    let p = Policy {
        max_retries: 3,
        ..Policy::default()
    };
    let mut m = at(MachineState::Started, Step::Idle);
    for n in 1..=3 {
        let t = apply(&m, &p, Input::WorkloadExited(exit(1))).unwrap();
        assert_eq!(t.machine.state, MachineState::Starting, "restart {n}");
        assert_eq!(t.machine.restart_count, n);
        assert!(
            t.effects
                .contains(&Effect::ArmTimer(Timer::RestartBackoff, restart_backoff(n)))
        );
        let x = t.events[0].exit.as_ref().unwrap();
        assert!(x.restarting);
        assert_eq!(x.restart_count, n);
        let t = apply(&t.machine, &p, Input::TimerFired(Timer::RestartBackoff)).unwrap();
        assert_eq!(t.effects, vec![Effect::PrepareImage]);
        let t = apply(&t.machine, &p, Input::Prepared).unwrap();
        assert_eq!(t.effects, vec![Effect::StartWorkload]);
        m = apply(&t.machine, &p, Input::WorkloadStarted)
            .unwrap()
            .machine;
    }
    let t = apply(&m, &p, Input::WorkloadExited(exit(1))).unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
    assert_eq!(
        t.events[0].message.as_deref(),
        Some("machine has reached its max restart count (3)")
    );
}

#[test]
fn on_failure_does_not_restart_a_clean_exit() {
    let p = Policy::default();
    let t = apply(
        &at(MachineState::Started, Step::Idle),
        &p,
        Input::WorkloadExited(exit(0)),
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
    assert!(t.events[0].message.is_none());
}

#[test]
fn always_restarts_clean_exits_but_not_user_stops() {
    let p = Policy {
        restart: RestartPolicy::Always,
        ..Policy::default()
    };
    let t = apply(
        &at(MachineState::Started, Step::Idle),
        &p,
        Input::WorkloadExited(exit(0)),
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Starting);
    let t = apply(
        &at(MachineState::Stopping, Step::Idle),
        &p,
        Input::WorkloadExited(exit(0)),
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
}

#[test]
fn no_policy_never_restarts() {
    let p = Policy {
        restart: RestartPolicy::No,
        ..Policy::default()
    };
    let t = apply(
        &at(MachineState::Started, Step::Idle),
        &p,
        Input::WorkloadExited(exit(2)),
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
}

#[test]
fn auto_destroy_destroys_after_final_exit() {
    let p = Policy {
        restart: RestartPolicy::No,
        auto_destroy: true,
        ..Policy::default()
    };
    let t = apply(
        &at(MachineState::Started, Step::Idle),
        &p,
        Input::WorkloadExited(exit(0)),
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Destroying);
    assert!(t.effects.contains(&Effect::DestroyWorkload));
    assert!(!t.effects.contains(&Effect::Prewarm));
    let kinds: Vec<_> = t.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["exit", "destroy"]);
    let t = apply(&t.machine, &p, Input::WorkloadDestroyed).unwrap();
    assert_eq!(t.machine.state, MachineState::Destroyed);
}

#[test]
fn destroy_of_a_running_machine_needs_force() {
    let p = Policy::default();
    let m = at(MachineState::Started, Step::Idle);
    assert_eq!(
        apply(&m, &p, Input::Destroy { force: false }),
        Err(Denied::NotStopped(MachineState::Started))
    );
    let t = apply(&m, &p, Input::Destroy { force: true }).unwrap();
    assert_eq!(t.machine.state, MachineState::Destroying);
    assert_eq!(t.effects, vec![Effect::DestroyWorkload]);
}

#[test]
fn start_is_refused_while_stopping_and_after_destroy() {
    let p = Policy::default();
    assert_eq!(
        apply(&at(MachineState::Stopping, Step::Idle), &p, Input::Start),
        Err(Denied::CannotStart(MachineState::Stopping))
    );
    assert_eq!(
        apply(&at(MachineState::Destroyed, Step::Idle), &p, Input::Start),
        Err(Denied::CannotStart(MachineState::Destroyed))
    );
}

#[test]
fn repeated_requests_are_noops() {
    let p = Policy::default();
    for (state, input) in [
        (MachineState::Started, Input::Start),
        (
            MachineState::Stopped,
            Input::Stop {
                signal: None,
                timeout: None,
            },
        ),
        (MachineState::Destroying, Input::Destroy { force: false }),
        (MachineState::Destroyed, Input::Destroy { force: true }),
    ] {
        let m = at(state, Step::Idle);
        let t = apply(&m, &p, input.clone()).unwrap();
        assert!(t.is_noop(&m), "{state:?} {input:?}");
    }
}

#[test]
fn recovery_adopts_running_and_records_missed_exits() {
    let p = Policy {
        restart: RestartPolicy::No,
        ..Policy::default()
    };
    let m = at(MachineState::Started, Step::Idle);
    let t = apply(&m, &p, Input::Resume(Observed::Running)).unwrap();
    assert_eq!(t.machine.state, MachineState::Started);
    assert_eq!(t.effects, vec![Effect::WatchExit]);

    let t = apply(&m, &p, Input::Resume(Observed::Exited(exit(3)))).unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
    assert_eq!(t.events[0].exit.as_ref().unwrap().info.exit_code, 3);

    let t = apply(&m, &p, Input::Resume(Observed::Absent)).unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
    assert!(t.events[0].exit.as_ref().unwrap().info.error.is_some());

    // A stop in flight when the daemon died is carried on.
    let t = apply(
        &at(MachineState::Stopping, Step::Idle),
        &p,
        Input::Resume(Observed::Running),
    )
    .unwrap();
    assert_eq!(t.effects[0], Effect::WatchExit);
    assert!(matches!(t.effects[1], Effect::Signal(_)));

    // A half-finished destroy is finished.
    let t = apply(
        &at(MachineState::Destroying, Step::Idle),
        &p,
        Input::Resume(Observed::Absent),
    )
    .unwrap();
    assert_eq!(t.effects, vec![Effect::DestroyWorkload]);

    // Stray workloads of stopped machines are cleaned up.
    let t = apply(
        &at(MachineState::Stopped, Step::Idle),
        &p,
        Input::Resume(Observed::Running),
    )
    .unwrap();
    assert_eq!(t.effects, vec![Effect::CleanupWorkload]);
}

#[test]
fn stop_during_backoff_is_immediate() {
    let p = Policy::default();
    let m = at(MachineState::Starting, Step::Backoff);
    let t = apply(
        &m,
        &p,
        Input::Stop {
            signal: None,
            timeout: None,
        },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
    assert!(
        t.effects
            .contains(&Effect::CancelTimer(Timer::RestartBackoff))
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    assert_eq!(restart_backoff(1), Duration::from_millis(100));
    assert_eq!(restart_backoff(2), Duration::from_millis(200));
    assert_eq!(restart_backoff(50), Duration::from_secs(10));
}

#[test]
fn wire_names_roundtrip() {
    for s in MachineState::ALL {
        assert_eq!(MachineState::parse(s.as_str()), Some(*s));
    }
}

fn arb_state() -> impl Strategy<Value = MachineState> {
    proptest::sample::select(MachineState::ALL.to_vec())
}

fn arb_step() -> impl Strategy<Value = Step> {
    proptest::sample::select(vec![
        Step::Idle,
        Step::Preparing,
        Step::Launching,
        Step::Backoff,
        Step::Thawing,
    ])
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input::Resume(Observed::Running)),
        (0i32..3).prop_map(|c| Input::Resume(Observed::Exited(exit(c)))),
        Just(Input::Resume(Observed::Absent)),
        Just(Input::Start),
        Just(Input::ScheduledStart),
        Just(Input::Stop {
            signal: None,
            timeout: None
        }),
        any::<bool>().prop_map(|force| Input::Destroy { force }),
        Just(Input::Prepared),
        Just(Input::PrepareFailed("x".into())),
        Just(Input::WorkloadStarted),
        Just(Input::WorkloadStartFailed("x".into())),
        (0i32..3).prop_map(|c| Input::WorkloadExited(exit(c))),
        Just(Input::WorkloadDestroyed),
        Just(Input::WorkloadDestroyFailed("x".into())),
        Just(Input::TimerFired(Timer::StopTimeout)),
        Just(Input::TimerFired(Timer::RestartBackoff)),
        Just(Input::TimerFired(Timer::DestroyRetry)),
        Just(Input::Restart {
            signal: None,
            timeout: None
        }),
        any::<bool>().prop_map(|launch| Input::Update { launch }),
        Just(Input::Suspend),
        Just(Input::Signal(Signal::Usr1)),
        Just(Input::Frozen),
        Just(Input::FreezeFailed("x".into())),
        Just(Input::Thawed),
        Just(Input::ThawFailed("x".into())),
    ]
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (
        proptest::sample::select(vec![
            RestartPolicy::No,
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
        ]),
        0u32..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(restart, max_retries, auto_destroy, scheduled)| Policy {
            restart,
            max_retries,
            auto_destroy,
            scheduled,
            ..Policy::default()
        })
}

proptest! {
    /// Invariants over random walks through the machine.
    #[test]
    fn invariants_hold_on_random_walks(
        state in arb_state(),
        step in arb_step(),
        policy in arb_policy(),
        inputs in proptest::collection::vec(arb_input(), 1..40),
    ) {
        let mut m = Machine { state, step, restart_count: 0, launch: false };
        for input in inputs {
            let before = m.clone();
            match apply(&m, &policy, input.clone()) {
                Ok(t) => {
                    // Destroyed is terminal.
                    if before.state == MachineState::Destroyed {
                        prop_assert_eq!(t.machine.state, MachineState::Destroyed);
                    }
                    // Only the teardown's success reaches `destroyed`.
                    if t.machine.state == MachineState::Destroyed && before.state != MachineState::Destroyed {
                        prop_assert_eq!(&input, &Input::WorkloadDestroyed);
                    }
                    // Restarts never exceed max_retries under on-failure.
                    if policy.restart == RestartPolicy::OnFailure {
                        prop_assert!(t.machine.restart_count <= policy.max_retries.max(before.restart_count));
                    }
                    // Every state change is either recorded or internal to startup.
                    if t.machine.state != before.state {
                        let silent = matches!(
                            (before.state, t.machine.state),
                            (MachineState::Created, MachineState::Stopped)
                                | (MachineState::Created, MachineState::Starting)
                                | (MachineState::Starting, MachineState::Starting)
                        );
                        prop_assert!(silent || !t.events.is_empty(), "{:?} -> {:?} by {:?} unrecorded", before.state, t.machine.state, input);
                    }
                    // A workload is started only from `starting`.
                    if t.effects.contains(&Effect::StartWorkload) {
                        prop_assert_eq!(t.machine.state, MachineState::Starting);
                    }
                    m = t.machine;
                }
                Err(denied) => {
                    // Only user requests are ever refused.
                    prop_assert!(
                        matches!(
                            input,
                            Input::Start
                                | Input::Stop { .. }
                                | Input::Destroy { .. }
                                | Input::Restart { .. }
                                | Input::Update { .. }
                                | Input::Suspend
                                | Input::Signal(_)
                        ),
                        "{:?} denied: {}", input, denied
                    );
                }
            }
        }
    }
}

#[test]
fn restart_stops_then_starts_again() {
    let p = Policy::default();
    let m = at(MachineState::Started, Step::Idle);
    let t = apply(
        &m,
        &p,
        Input::Restart {
            signal: Some(Signal::Term),
            timeout: None,
        },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Restarting);
    assert_eq!(t.effects[0], Effect::Signal(Signal::Term));
    assert_eq!(
        (t.events[0].kind, t.events[0].status),
        ("restart", MachineState::Restarting)
    );
    let t = apply(&t.machine, &p, Input::WorkloadExited(exit(143))).unwrap();
    assert_eq!(t.machine.state, MachineState::Starting);
    assert!(t.effects.contains(&Effect::PrepareImage));
    let x = t.events[0].exit.as_ref().unwrap();
    assert!(x.requested_stop && x.restarting);
    let (m, _, _) = run(t.machine, &p, vec![Input::Prepared, Input::WorkloadStarted]);
    assert_eq!(m.state, MachineState::Started);
    // A stopped machine restarts by starting.
    let t = apply(
        &at(MachineState::Stopped, Step::Idle),
        &p,
        Input::Restart {
            signal: None,
            timeout: None,
        },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Starting);
}

#[test]
fn update_of_a_running_machine_replaces_it() {
    let p = Policy::default();
    let t = apply(
        &at(MachineState::Started, Step::Idle),
        &p,
        Input::Update { launch: true },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Replacing);
    assert_eq!(
        (t.events[0].kind, t.events[0].status),
        ("update", MachineState::Replacing)
    );
    let t = apply(&t.machine, &p, Input::WorkloadExited(exit(130))).unwrap();
    assert_eq!(t.machine.state, MachineState::Starting);
    assert!(t.effects.contains(&Effect::PrepareImage));

    // skip_launch: the new version rests stopped, prepared.
    let t = apply(
        &at(MachineState::Started, Step::Idle),
        &p,
        Input::Update { launch: false },
    )
    .unwrap();
    let t = apply(&t.machine, &p, Input::WorkloadExited(exit(130))).unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
    assert!(t.effects.contains(&Effect::Prewarm));
}

#[test]
fn update_of_a_stopped_or_crashlooping_machine() {
    let p = Policy::default();
    let t = apply(
        &at(MachineState::Stopped, Step::Idle),
        &p,
        Input::Update { launch: true },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Starting);
    assert_eq!(t.effects, vec![Effect::PrepareImage]);
    let t = apply(
        &at(MachineState::Stopped, Step::Idle),
        &p,
        Input::Update { launch: false },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Stopped);
    assert_eq!(
        (t.events[0].kind, t.events[0].status),
        ("update", MachineState::Stopped)
    );
    // In restart backoff: the fix applies at once.
    let mut m = at(MachineState::Starting, Step::Backoff);
    m.restart_count = 7;
    let t = apply(&m, &p, Input::Update { launch: true }).unwrap();
    assert_eq!(
        (t.machine.state, t.machine.restart_count),
        (MachineState::Starting, 0)
    );
    assert!(
        t.effects
            .contains(&Effect::CancelTimer(Timer::RestartBackoff))
    );
    assert!(t.effects.contains(&Effect::PrepareImage));
    // While the workload is being launched: busy.
    assert_eq!(
        apply(
            &at(MachineState::Starting, Step::Launching),
            &p,
            Input::Update { launch: true }
        ),
        Err(Denied::Busy(MachineState::Starting))
    );
}

#[test]
fn suspend_freezes_and_start_thaws() {
    let p = Policy::default();
    let t = apply(&at(MachineState::Started, Step::Idle), &p, Input::Suspend).unwrap();
    assert_eq!(
        (t.machine.state, t.effects.clone()),
        (MachineState::Suspending, vec![Effect::Freeze])
    );
    let t = apply(&t.machine, &p, Input::Frozen).unwrap();
    assert_eq!(t.machine.state, MachineState::Suspended);
    let t = apply(&t.machine, &p, Input::Start).unwrap();
    assert_eq!(
        (t.machine.state, t.machine.step),
        (MachineState::Starting, Step::Thawing)
    );
    assert_eq!(t.effects, vec![Effect::Thaw]);
    let t = apply(&t.machine, &p, Input::Thawed).unwrap();
    assert_eq!(t.machine.state, MachineState::Started);
    assert_eq!(t.events[0].message.as_deref(), Some("resumed"));
    // A failed freeze leaves it running; a failed thaw starts afresh.
    let t = apply(
        &at(MachineState::Suspending, Step::Idle),
        &p,
        Input::FreezeFailed("no".into()),
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Started);
    let t = apply(
        &at(MachineState::Starting, Step::Thawing),
        &p,
        Input::ThawFailed("no".into()),
    )
    .unwrap();
    assert_eq!(t.machine.step, Step::Preparing);
    assert!(t.effects.contains(&Effect::PrepareImage));
}

#[test]
fn suspended_machines_stop_and_destroy_without_force() {
    let p = Policy::default();
    let m = at(MachineState::Suspended, Step::Idle);
    let t = apply(
        &m,
        &p,
        Input::Stop {
            signal: None,
            timeout: None,
        },
    )
    .unwrap();
    assert_eq!(t.machine.state, MachineState::Stopping);
    assert_eq!(
        &t.effects[..2],
        &[Effect::Signal(Signal::Kill), Effect::Thaw]
    );
    let t = apply(&m, &p, Input::Destroy { force: false }).unwrap();
    assert_eq!(t.machine.state, MachineState::Destroying);
    assert_eq!(
        apply(&m, &p, Input::Signal(Signal::Usr1)),
        Err(Denied::NotRunning(MachineState::Suspended))
    );
}

#[test]
fn signals_only_reach_running_machines() {
    let p = Policy::default();
    let t = apply(
        &at(MachineState::Started, Step::Idle),
        &p,
        Input::Signal(Signal::Usr1),
    )
    .unwrap();
    assert_eq!(t.effects, vec![Effect::Signal(Signal::Usr1)]);
    assert!(t.events.is_empty());
    assert_eq!(
        apply(
            &at(MachineState::Stopped, Step::Idle),
            &p,
            Input::Signal(Signal::Usr1)
        ),
        Err(Denied::NotRunning(MachineState::Stopped))
    );
}

#[test]
fn scheduled_runs_start_resting_machines_and_users_cannot() {
    let p = Policy {
        scheduled: true,
        ..Policy::default()
    };
    for state in [
        MachineState::Stopped,
        MachineState::Failed,
        MachineState::Suspended,
    ] {
        let m = at(state, Step::Idle);
        assert_eq!(apply(&m, &p, Input::Start), Err(Denied::Scheduled(state)));
        let t = apply(&m, &p, Input::ScheduledStart).unwrap();
        assert_eq!(t.machine.state, MachineState::Starting, "{state}");
        assert_eq!(t.events[0].source, Source::Flyd);
        assert_eq!(t.events[0].kind, "start");
    }
    assert!(
        apply(
            &at(MachineState::Stopped, Step::Idle),
            &p,
            Input::Restart {
                signal: None,
                timeout: None
            }
        )
        .is_err()
    );
    // Before the cycle begins (or without a schedule) users start it.
    let t = apply(
        &at(MachineState::Stopped, Step::Idle),
        &Policy::default(),
        Input::Start,
    )
    .unwrap();
    assert_eq!(t.events[0].source, Source::User);
    // A run that comes while the machine is busy is skipped.
    for state in [
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Restarting,
        MachineState::Replacing,
        MachineState::Suspending,
        MachineState::Destroying,
        MachineState::Destroyed,
    ] {
        let m = at(state, Step::Idle);
        assert!(
            apply(&m, &p, Input::ScheduledStart).unwrap().is_noop(&m),
            "{state}"
        );
    }
}
