//! `simctl certs`: the lab's CA and certificates (see the `fleet-tls` crate for what each
//! file is and where it goes).

use crate::cli::{CertsCommand, LeafArgs};
use crate::exit::{Exit, ExitError, bad_input};
use fleet_tls::issue::{self, IssueError, Leaf};

/// Runs a `certs` subcommand; prints the files written.
pub fn certs(command: CertsCommand) -> Result<Exit, ExitError> {
    let written = match command {
        CertsCommand::Init {
            dir,
            coordinator_hosts,
            agents,
            days,
        } => issue::init(&dir, &coordinator_hosts, &agents, days),
        CertsCommand::Issue {
            dir,
            leaf,
            days,
            replace,
        } => issue::issue_into(&dir, leaf_of(&leaf), days, replace),
    }
    .map_err(refused)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(Exit::Pass)
}

fn leaf_of(args: &LeafArgs) -> Leaf<'_> {
    match (&args.agent, args.control) {
        (Some(name), _) => Leaf::Agent { name },
        (None, true) => Leaf::Control,
        (None, false) => Leaf::Coordinator {
            hosts: &args.coordinator_hosts,
        },
    }
}

/// Every refusal is about the input (a name, a host, a file that exists) except failing
/// file I/O, which is still the user's directory: all exit 2, nothing half-written.
fn refused(error: IssueError) -> ExitError {
    bad_input(anyhow::Error::new(error))
}
