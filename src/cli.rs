//! The command line: `caldera [--config PATH] <run|check-config|route|render>`;
//! the option works before or after the subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "caldera",
    version,
    about = "Precomputes and serves what VoIP phones, SIP servers and edge devices need, from CouchDB"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "CALDERA_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (under systemd: Type=notify).
    Run,
    /// Validate the configuration, report every problem, and exit
    /// (0 when valid, 78 when not).
    CheckConfig,
    /// Look up a route from CouchDB data (no daemon needed) and print the
    /// answer as JSON (exit 0 routed, 1 no route or unknown ruleset,
    /// 64 bad number, 69 CouchDB unavailable).
    Route {
        /// The ruleset's sip_domain_name.
        sip_domain_name: String,
        /// The ruleset's groupid.
        groupid: String,
        /// The called number.
        number: String,
        /// The asking host (its local gateways get their priority bonus).
        #[arg(long)]
        host: Option<String>,
    },
    /// Print what a phone would receive, built from the CouchDB data (no
    /// daemon needed): every file as JSON, or with --file that file's bytes
    /// (exit 0 served, 1 unknown realm/MAC/file or not served, 64 bad MAC,
    /// 69 CouchDB unavailable).
    Render {
        /// The account's realm (the Host phones use), or its id.
        #[arg(long)]
        realm: String,
        /// The phone's MAC, in any common notation.
        #[arg(long)]
        mac: String,
        /// One file to print (its bytes, as the phone would get them).
        #[arg(long)]
        file: Option<String>,
    },
}

impl Cli {
    /// The configuration path, and whether it was given explicitly (a
    /// missing default file only means "use defaults").
    pub fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_goes_before_or_after_the_subcommand() {
        let after = Cli::try_parse_from(["caldera", "run", "--config", "a.toml"]).unwrap();
        let before =
            Cli::try_parse_from(["caldera", "--config", "a.toml", "check-config"]).unwrap();
        assert_eq!(after.config_path(), (PathBuf::from("a.toml"), true));
        assert!(matches!(before.command, Command::CheckConfig));
        assert_eq!(before.config_path().0, PathBuf::from("a.toml"));
        assert!(Cli::try_parse_from(["caldera", "fly"]).is_err());
        let route = Cli::try_parse_from([
            "caldera",
            "route",
            "--config",
            "a.toml",
            "example.net",
            "default",
            "33123",
            "--host",
            "sbc1",
        ])
        .unwrap();
        assert!(
            matches!(route.command, Command::Route { ref number, ref host, .. } if number == "33123" && host.as_deref() == Some("sbc1"))
        );
        let render = Cli::try_parse_from([
            "caldera",
            "render",
            "--realm",
            "acme.example.net",
            "--mac",
            "00:15:65:4a:a9:37",
            "--config",
            "a.toml",
        ])
        .unwrap();
        assert!(matches!(render.command, Command::Render { ref file, .. } if file.is_none()));
        assert_eq!(render.config_path().0, PathBuf::from("a.toml"));
    }
}
