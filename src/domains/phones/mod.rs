//! Phone provisioning (seed Stromboli): accounts, provision configs,
//! policies, profiles and units in the `units` database become merged
//! configurations and vendor files, served to phones.
//!
//! `mac` normalises MAC addresses; `vendors` holds every vendor's file
//! names, grammars, templates and parameter catalogue.

pub mod mac;
pub mod vendors;
