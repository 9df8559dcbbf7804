//! `sockmsg-keymgr`: the key manager, root of trust of a sockmsg group (being written).

pub mod client;
pub mod datadir;
pub mod handler;
pub mod merkle;
pub mod registry;
pub mod server;
pub mod store;
pub mod verify;
