//! The subcommands of `anatomy`, one module each.

pub mod ask;
