//! `sockmsg-node`: the chat program. Reads settings (config.yml, then flags), asks for
//! what is missing when a person is at the terminal, makes sure a key manager and a proxy
//! are reachable (starting both in-process on a machine that has none), then runs the
//! node with an interactive line editor or, with `--json`, a line protocol for scripts.

mod cli;
mod services;
#[cfg(test)]
mod testdir;
mod ui;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Args as clap::Parser>::parse();
    cli::init_logging();
    // One thread: a node's work is small and sequential (the state machines are not
    // shared), and an idle node should wake as little as possible.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sockmsg-node: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockmsg-node: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
