//! The steps a chown makes necessary, as states an inode passes through.
//!
//! A chown of a non-directory takes its setuid bit (and its setgid bit when group-executable)
//! and its file capability; the shift writes them back in the steps after it. Between the chown
//! and those steps, what the inode lost exists only in the journal. Before such a chown, a run
//! writes and syncs a [`StepPlan`]: the inode as it is (`base`), what it should hold there
//! (`owed`: the base with what an earlier run's chown took and did not write back), what the
//! run leaves (`end`), and the size and mtime that none of the steps changes. After each step it notes the
//! step (unsynced). The states along the plan follow from `base` and `end` alone, so a later run
//! can tell from what the inode holds whether anything but the plan's own steps touched it since —
//! without relying on a note written after the step, which a crash can cut off:
//!
//! - the inode holds one of the plan's states at or after the last noted step: nothing else
//!   changed it (or only a change that left every attribute as it was, which no run could tell
//!   from no change), and the run goes on from there, restoring what the chown took;
//! - anything else: another process changed it since; the change wins, and what the chown took
//!   and the plan had not written back yet is a loss, kept until restored or accepted.
//!
//! Pure: no disk, no journal; the decisions are tested by a table.

use std::fmt;

/// Setuid and setgid.
pub const SETID: u32 = 0o6000;
pub const SETUID: u32 = 0o4000;
pub const SETGID: u32 = 0o2000;
const GROUP_EXEC: u32 = 0o010;

/// The part of an inode's state a chown changes or takes: owner, group, mode bits (`0o7777`),
/// file capability.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub caps: Option<Vec<u8>>,
}

/// One step of a plan, in the order they are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Owner,
    Mode,
    Caps,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Owner, Step::Mode, Step::Caps];

    pub fn name(self) -> &'static str {
        match self {
            Step::Owner => "owner",
            Step::Mode => "mode",
            Step::Caps => "caps",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// The mode a chown leaves on a non-directory of mode `mode`: the setuid bit cleared, the setgid
/// bit too when group-executable (Linux since 2.6). A filesystem that clears more leaves a
/// state no plan passes through: a listed loss, never a bit given back over a `chmod g-s`.
pub fn after_chown(mode: u32) -> u32 {
    let sgid = if mode & GROUP_EXEC != 0 { SETGID } else { 0 };
    mode & !SETUID & !sgid
}

/// What a chown took from an inode that was never written back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Setuid/setgid bits.
    pub bits: u32,
    /// The capability, as it should be now.
    pub caps: Option<Vec<u8>>,
}

impl Lost {
    pub fn is_empty(&self) -> bool {
        self.bits == 0 && self.caps.is_none()
    }

    /// Whether an inode holding `now` has it all back.
    pub fn restored_in(&self, now: &Held) -> bool {
        now.mode & self.bits == self.bits && (self.caps.is_none() || now.caps.is_some())
    }
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.bits & SETID {
            SETID => "its setuid and setgid bits",
            SETUID => "its setuid bit",
            SETGID => "its setgid bit",
            _ => "",
        };
        match (bits.is_empty(), self.caps.is_some()) {
            (false, true) => write!(f, "{bits} and its file capability"),
            (false, false) => f.write_str(bits),
            (true, true) => f.write_str("its file capability"),
            (true, false) => f.write_str("nothing"),
        }
    }
}

/// A run's plan for an inode whose chown takes what later steps write back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// With `(dev, ino)`, the inode's identity.
    pub btime: Option<i128>,
    /// Unchanged by every step: a write since the plan began changes them.
    pub size: u64,
    pub mtime: i128,
    pub base: Held,
    /// The mode and capability the inode should hold at `base`: what an earlier run's chown
    /// took from it, back (ids as `base`'s).
    pub owed: Held,
    pub end: Held,
    /// How many of the plan's steps were noted as done (a prefix: they are taken in order).
    pub noted: usize,
    /// Where the run saw the inode, for messages.
    pub path: std::path::PathBuf,
}

impl StepPlan {
    pub fn new(
        btime: Option<i128>,
        (size, mtime): (u64, i128),
        base: Held,
        owed: Held,
        end: Held,
    ) -> StepPlan {
        StepPlan {
            btime,
            size,
            mtime,
            base,
            owed,
            end,
            noted: 0,
            path: std::path::PathBuf::new(),
        }
    }

    /// Whether a plan from `base` to `end` takes something in one step that a later step
    /// writes back: a chown followed by a mode or capability step.
    pub fn needed(base: &Held, end: &Held) -> bool {
        (base.uid, base.gid) != (end.uid, end.gid) && (end.mode & SETID != 0 || end.caps.is_some())
    }

    /// The plan's steps, in order, each with the state the inode holds after it.
    fn steps(&self) -> Vec<(Step, Held)> {
        let mut steps = Vec::new();
        let mut state = self.base.clone();
        if (state.uid, state.gid) != (self.end.uid, self.end.gid) {
            state = Held {
                uid: self.end.uid,
                gid: self.end.gid,
                mode: after_chown(state.mode),
                caps: None,
            };
            steps.push((Step::Owner, state.clone()));
        }
        if state.mode != self.end.mode {
            state.mode = self.end.mode;
            steps.push((Step::Mode, state.clone()));
        }
        if state.caps != self.end.caps {
            state.caps = self.end.caps.clone();
            steps.push((Step::Caps, state));
        }
        steps
    }

    /// Notes step `step` done (a note for a step the plan does not take is ignored).
    pub fn note(&mut self, step: Step) {
        if let Some(i) = self.steps().iter().position(|(s, _)| *s == step) {
            self.noted = self.noted.max(i + 1);
        }
    }

    /// Where an inode that holds `now` (with `size` and `mtime`) stands on this plan: `Some(i)`
    /// when it holds the state after the plan's first `i` steps, for an `i` at or after the last
    /// noted step; `None` when anything but the plan's steps changed it since.
    pub fn position(&self, now: &Held, size: u64, mtime: i128) -> Option<usize> {
        if (size, mtime) != (self.size, self.mtime) {
            return None;
        }
        std::iter::once(self.base.clone())
            .chain(self.steps().into_iter().map(|(_, state)| state))
            .enumerate()
            .skip(self.noted)
            .find(|(_, state)| state == now)
            .map(|(i, _)| i)
    }

    /// What an inode that holds `now` lost to a chown, if anything changed it since
    /// ([`position`](StepPlan::position) is `None`) and the inode lacks it now: what this plan's
    /// chown took (it happened if it was noted, or if the inode holds the end's ids) that no
    /// noted step wrote back; before that chown, what an earlier run's chown took (`owed`).
    pub fn lost(&self, now: &Held) -> Lost {
        let steps = self.steps();
        let done = |step: Step| {
            steps
                .iter()
                .position(|(s, _)| *s == step)
                .is_some_and(|i| i < self.noted)
        };
        let chowned = steps.first().is_some_and(|(s, _)| *s == Step::Owner)
            && (done(Step::Owner) || (now.uid, now.gid) == (self.end.uid, self.end.gid));
        if !chowned {
            let caps = match (&self.owed.caps, &self.base.caps, &now.caps) {
                (Some(c), None, None) => Some(c.clone()),
                _ => None,
            };
            return Lost {
                bits: self.owed.mode & SETID & !self.base.mode & !now.mode,
                caps,
            };
        }
        let taken = self.end.mode & SETID & !after_chown(self.end.mode);
        let bits = if done(Step::Mode) {
            0
        } else {
            taken & !now.mode
        };
        let caps = match (&self.end.caps, &now.caps, done(Step::Caps)) {
            (Some(c), None, false) => Some(c.clone()),
            _ => None,
        };
        Lost { bits, caps }
    }

    /// What the plan's chown took and no noted step wrote back, for an inode the run did not
    /// see: everything the plan may still owe, as if the chown happened and nothing was kept.
    pub fn debt(&self) -> Lost {
        self.lost(&Held {
            uid: self.end.uid,
            gid: self.end.gid,
            mode: 0,
            caps: None,
        })
    }

    /// What an inode that holds `now` at `position` should hold: what a chown took comes back,
    /// from `owed` before the plan's chown, from `end` after it.
    pub fn effective(&self, position: usize, now: &Held) -> Held {
        if position == 0 {
            Held {
                mode: self.owed.mode,
                caps: self.owed.caps.clone(),
                ..now.clone()
            }
        } else {
            Held {
                mode: self.end.mode,
                caps: self.end.caps.clone(),
                ..now.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn held(uid: u32, mode: u32, caps: bool) -> Held {
        Held {
            uid,
            gid: uid,
            mode,
            caps: caps.then(|| CAP.to_vec()),
        }
    }

    /// A forward plan for a setuid file with a capability: 100000 → 200000.
    fn plan(mode: u32, caps: bool) -> StepPlan {
        let base = held(100000, mode, caps);
        StepPlan::new(
            Some(1),
            (10, 7),
            base.clone(),
            base,
            held(200000, mode, caps),
        )
    }

    #[test]
    fn a_chown_clears_setuid_and_group_executable_setgid() {
        assert_eq!(after_chown(0o4755), 0o755);
        assert_eq!(after_chown(0o6755), 0o755);
        assert_eq!(after_chown(0o2745), 0o2745, "setgid without g+x stays");
        assert_eq!(after_chown(0o1777), 0o1777);
    }

    #[test]
    fn only_a_chown_that_takes_something_needs_a_plan() {
        assert!(StepPlan::needed(
            &held(1, 0o4755, false),
            &held(2, 0o4755, false)
        ));
        assert!(StepPlan::needed(
            &held(1, 0o755, true),
            &held(2, 0o755, true)
        ));
        assert!(!StepPlan::needed(
            &held(1, 0o755, false),
            &held(2, 0o755, false)
        ));
        assert!(!StepPlan::needed(
            &held(1, 0o4755, true),
            &held(1, 0o4755, true)
        ));
    }

    // Every state our own steps leave, with every prefix of notes: the position is found, and
    // nothing is lost.
    #[test]
    fn every_state_of_the_plan_is_recognised_after_any_noted_prefix() {
        let p = plan(0o4755, true);
        let states = [
            held(100000, 0o4755, true),
            held(200000, 0o755, false),
            held(200000, 0o4755, false),
            held(200000, 0o4755, true),
        ];
        for noted in 0..=3 {
            for (i, s) in states.iter().enumerate() {
                let mut q = p.clone();
                for step in Step::ALL.iter().take(noted) {
                    q.note(*step);
                }
                let want = (i >= noted).then_some(i);
                assert_eq!(q.position(s, 10, 7), want, "state {i}, {noted} noted");
            }
        }
    }

    // The table of what others do after a crash: each row is the state the inode holds, the
    // steps noted, and whether the run may go on (position) or what is lost.
    #[test]
    fn changes_by_others_win_and_what_was_not_written_back_is_lost() {
        let p = plan(0o4755, true);
        let all = Lost {
            bits: SETUID,
            caps: Some(CAP.to_vec()),
        };
        let cap_only = Lost {
            bits: 0,
            caps: Some(CAP.to_vec()),
        };
        /// What the inode holds, its size and mtime, how many steps were noted; then where the
        /// run stands on the plan (`None`: changed by another), and what is lost then.
        type Row = (&'static str, Held, (u64, i128), usize, Option<usize>, Lost);
        #[rustfmt::skip]
        let rows: [Row; 11] = [
            ("killed before the chown", held(100000, 0o4755, true), (10, 7), 0, Some(0), Lost::default()),
            ("killed right after the chown, no note", held(200000, 0o755, false), (10, 7), 0, Some(1), Lost::default()),
            ("after the chown: chmod 0700", held(200000, 0o700, false), (10, 7), 1, None, all.clone()),
            ("after the chown: a write", held(200000, 0o755, false), (11, 9), 1, None, all.clone()),
            ("after the chown, no note: a write", held(200000, 0o755, false), (10, 9), 0, None, all.clone()),
            ("after the mode step: chmod u-s", held(200000, 0o755, false), (10, 7), 2, None, cap_only.clone()),
            ("after the mode step, no note: chmod u-s", held(200000, 0o755, false), (10, 7), 1, Some(1), Lost::default()),
            ("after all steps: setcap -r", held(200000, 0o4755, false), (10, 7), 3, None, Lost::default()),
            ("before the chown: chmod u-s", held(100000, 0o755, true), (10, 7), 0, None, Lost::default()),
            ("before the chown: chown by hand to the end ids", held(200000, 0o755, false), (10, 7), 0, Some(1), Lost::default()),
            ("after the chown: setcap of another capability", Held { caps: Some(vec![2, 0, 0, 2]), ..held(200000, 0o755, false) }, (10, 7), 1, None, Lost { bits: SETUID, caps: None }),
        ];
        for (what, now, (size, mtime), noted, position, lost) in rows {
            let mut q = p.clone();
            q.noted = noted;
            assert_eq!(q.position(&now, size, mtime), position, "{what}");
            if position.is_none() {
                assert_eq!(q.lost(&now), lost, "{what}");
            }
        }
    }

    #[test]
    fn the_effective_state_gets_back_what_the_chown_took() {
        let p = plan(0o4755, true);
        let now = held(200000, 0o755, false);
        assert_eq!(p.effective(1, &now), held(200000, 0o4755, true));
        let before = held(100000, 0o4755, true);
        assert_eq!(p.effective(0, &before), before);
    }

    // A rollback's plan for a file the shift had chowned but not finished: its base lacks what
    // the shift's chown took; at position 0 that is still owed, and lost if others change it.
    #[test]
    fn what_an_earlier_chown_took_is_owed_before_this_plans_chown() {
        let base = held(200000, 0o755, false);
        let owed = held(200000, 0o4755, true);
        let end = held(100000, 0o4755, true);
        let p = StepPlan::new(Some(1), (10, 7), base.clone(), owed.clone(), end);
        assert_eq!(p.position(&base, 10, 7), Some(0));
        assert_eq!(p.effective(0, &base), owed, "killed before its chown");
        assert_eq!(p.position(&held(100000, 0o755, false), 10, 7), Some(1));
        let changed = held(200000, 0o700, false);
        assert_eq!(p.position(&changed, 10, 7), None);
        assert_eq!(
            p.lost(&changed),
            Lost {
                bits: SETUID,
                caps: Some(CAP.to_vec())
            },
            "a chmod before this plan's chown"
        );
    }

    #[test]
    fn a_setgid_file_without_group_exec_keeps_its_bit_through_the_chown() {
        let p = plan(0o2745, false);
        let now = held(200000, 0o2745, false);
        assert_eq!(p.position(&now, 10, 7), Some(1));
        // `chmod g-s` after the chown is a change, not a state of the plan.
        let mut q = p.clone();
        q.note(Step::Owner);
        assert_eq!(q.position(&held(200000, 0o745, false), 10, 7), None);
    }

    #[test]
    fn losses_say_what_was_lost() {
        let l = Lost {
            bits: SETID,
            caps: Some(vec![1]),
        };
        assert_eq!(
            l.to_string(),
            "its setuid and setgid bits and its file capability"
        );
        assert!(l.restored_in(&held(1, 0o6755, true)));
        assert!(!l.restored_in(&held(1, 0o4755, true)));
        assert!(!l.restored_in(&held(1, 0o6755, false)));
    }
}
