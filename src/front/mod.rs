//! The front doors: the Lambda Runtime API loop ([`runtime`]) with the events
//! it carries ([`lambda`]), and a plain HTTP listener ([`local`]). Each turns
//! the world's request into an [`Incoming`](crate::exchange::Incoming) and the
//! answer back.

pub mod lambda;
pub mod local;
pub mod runtime;
