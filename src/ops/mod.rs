//! Operating kiln: logging and allocator settings now; metrics and health
//! endpoints come with the long-running commands.

pub mod allocator;
pub mod logging;
