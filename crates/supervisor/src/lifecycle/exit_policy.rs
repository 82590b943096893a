//! What happens after a service's sandbox ended: the restart, OOM and start
//! limit policies as one pure function.

use std::time::Duration;

use crate::spec::policy::{OomPolicy, Policy, RestartPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Exited,
    Signaled,
    OomKill,
    /// Killed for a failed startup or liveness probe.
    Unhealthy,
    /// Killed for a missed (or triggered) watchdog.
    Watchdog,
    /// Restarted by one of its `resourceRules`.
    Resource,
    /// Restarted because its network broke (a CNI CHECK failed).
    Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastExit {
    pub reason: Reason,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl LastExit {
    /// A payload killed by SIGKILL in a group whose OOM killer fired is an
    /// OOM kill, never a plain SIGKILL; so is a payload that died of the stop
    /// signal the OOM policy `stop` sent (`oom_stopped`).
    pub fn classify(code: i32, oom_kills_this_run: u64, oom_stopped: bool) -> LastExit {
        if code > 128 {
            let sig = code - 128;
            let oom_killed = sig == libc::SIGKILL && oom_kills_this_run > 0;
            let reason = if oom_killed || oom_stopped {
                Reason::OomKill
            } else {
                Reason::Signaled
            };
            LastExit {
                reason,
                code: None,
                signal: Some(sig),
            }
        } else {
            LastExit {
                reason: Reason::Exited,
                code: Some(code),
                signal: None,
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Ended for good by policy: `exited`.
    Exited,
    /// Stopped by the OOM policy `stop`.
    Stopped,
    /// Too many starts in the interval: `failed` until `isola start`.
    Failed,
    /// Restart after this delay (the `streak`-th consecutive restart).
    Restart { delay: Duration, streak: u32 },
}

pub struct Context {
    /// How long the run that just ended lasted.
    pub run: Duration,
    /// Starts within the last `limit.intervalMs`, the one that just ended included.
    pub recent_starts: usize,
    /// Consecutive restarts so far.
    pub streak: u32,
    /// A uniform sample in [0, 1) for jitter.
    pub unit: f64,
}

pub fn after_exit(p: &Policy, exit: &LastExit, cx: &Context) -> Next {
    if exit.reason == Reason::OomKill && p.oom == OomPolicy::Stop {
        return Next::Stopped;
    }
    let success = exit.reason == Reason::Exited
        && exit
            .code
            .is_some_and(|c| p.restart.success_exit_codes.contains(&c));
    let restart = match p.restart.policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => !success,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
    };
    if !restart {
        return Next::Exited;
    }
    if cx.recent_starts >= p.restart.limit.burst as usize {
        return Next::Failed;
    }
    let streak = if cx.run >= Duration::from_millis(p.restart.reset_after_ms) {
        1
    } else {
        cx.streak + 1
    };
    Next::Restart {
        delay: p.restart.delay(streak, cx.unit),
        streak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::policy::Restart;

    fn policy(r: RestartPolicy, oom: OomPolicy) -> Policy {
        Policy {
            restart: Restart {
                policy: r,
                ..Default::default()
            },
            oom,
            ..Default::default()
        }
    }

    fn cx(streak: u32) -> Context {
        Context {
            run: Duration::from_millis(10),
            recent_starts: 1,
            streak,
            unit: 0.5,
        }
    }

    #[test]
    fn classify_exits() {
        assert_eq!(LastExit::classify(0, 0, false).reason, Reason::Exited);
        assert_eq!(LastExit::classify(137, 0, false).reason, Reason::Signaled);
        assert_eq!(
            LastExit::classify(137, 1, false),
            LastExit {
                reason: Reason::OomKill,
                code: None,
                signal: Some(9)
            }
        );
        assert_eq!(LastExit::classify(143, 1, false).reason, Reason::Signaled);
        let stopped = LastExit::classify(143, 1, true);
        assert_eq!(
            (stopped.reason, stopped.signal),
            (Reason::OomKill, Some(15))
        );
        assert_eq!(LastExit::classify(0, 1, true).reason, Reason::Exited);
    }

    #[test]
    fn restart_policies() {
        let ok = LastExit::classify(0, 0, false);
        let bad = LastExit::classify(1, 0, false);
        assert_eq!(
            after_exit(
                &policy(RestartPolicy::OnFailure, OomPolicy::Restart),
                &ok,
                &cx(0)
            ),
            Next::Exited
        );
        assert!(matches!(
            after_exit(
                &policy(RestartPolicy::OnFailure, OomPolicy::Restart),
                &bad,
                &cx(0)
            ),
            Next::Restart { streak: 1, .. }
        ));
        assert!(matches!(
            after_exit(
                &policy(RestartPolicy::Always, OomPolicy::Restart),
                &ok,
                &cx(2)
            ),
            Next::Restart { streak: 3, .. }
        ));
        assert_eq!(
            after_exit(&policy(RestartPolicy::No, OomPolicy::Restart), &bad, &cx(0)),
            Next::Exited
        );
    }

    #[test]
    fn oom_stop_and_start_limit() {
        let oom = LastExit::classify(137, 1, false);
        assert_eq!(
            after_exit(
                &policy(RestartPolicy::Always, OomPolicy::Stop),
                &oom,
                &cx(0)
            ),
            Next::Stopped
        );
        assert!(matches!(
            after_exit(
                &policy(RestartPolicy::Always, OomPolicy::Kill),
                &oom,
                &cx(0)
            ),
            Next::Restart { .. }
        ));
        let mut c = cx(4);
        c.recent_starts = 5;
        assert_eq!(
            after_exit(&policy(RestartPolicy::Always, OomPolicy::Restart), &oom, &c),
            Next::Failed
        );
    }

    #[test]
    fn a_long_run_resets_the_streak() {
        let mut c = cx(7);
        c.run = Duration::from_secs(11);
        let n = after_exit(
            &policy(RestartPolicy::Always, OomPolicy::Restart),
            &LastExit::classify(1, 0, false),
            &c,
        );
        assert_eq!(
            n,
            Next::Restart {
                delay: Duration::from_millis(100),
                streak: 1
            }
        );
    }
}
