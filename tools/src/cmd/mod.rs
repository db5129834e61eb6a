//! The subcommands of `anatomy`, one module each.

pub mod ask;
pub mod convert;
pub mod inspect;
