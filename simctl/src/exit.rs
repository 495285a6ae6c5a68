//! How simctl ends: its exit code, and the error that ends it early.
//!
//! The codes are a contract with scripts and CI: 0 PASS, 1 FAIL, 2 bad input, 3 infrastructure
//! error. Bad input means nothing was started (or the coordinator refused the request as
//! invalid); infrastructure means the harness itself could not do its job, so the run says
//! nothing about the system under test.

use proto::v1::{RunReport, Verdict};

/// simctl's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the verdict is PASS, or the command did what it was asked.
    Pass,
    /// 1: the verdict is FAIL, or the fault asked for was not injected.
    Fail,
    /// 2: bad input (flags, config file, run directory); nothing was started.
    BadInput,
    /// 3: infrastructure error (a process, the coordinator or a file write failed).
    Infrastructure,
}

impl Exit {
    /// The exit code of a run with this report.
    pub fn of_report(report: &RunReport) -> Exit {
        if report.infrastructure {
            Exit::Infrastructure
        } else if report.verdict == Verdict::Pass as i32 {
            Exit::Pass
        } else {
            Exit::Fail
        }
    }

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Pass => 0,
            Exit::Fail => 1,
            Exit::BadInput => 2,
            Exit::Infrastructure => 3,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// An error that ends simctl, with the exit it ends with.
#[derive(Debug)]
pub struct ExitError {
    /// The exit code: [`Exit::BadInput`] or [`Exit::Infrastructure`].
    pub exit: Exit,
    /// What went wrong, with its context chain.
    pub error: anyhow::Error,
}

/// The user's input is wrong (exit 2).
pub fn bad_input(error: impl Into<anyhow::Error>) -> ExitError {
    ExitError {
        exit: Exit::BadInput,
        error: error.into(),
    }
}

/// The harness could not do its job (exit 3).
pub fn infrastructure(error: impl Into<anyhow::Error>) -> ExitError {
    ExitError {
        exit: Exit::Infrastructure,
        error: error.into(),
    }
}
