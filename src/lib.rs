//! breakglass: the emergency-access responder of a Stacks-based medical record system.

pub mod stacks;
