//! The coordinator's decisions as a pure state machine: who is a member, when a member is
//! dead, who forms the next generation, which checkpoint it restores, when to checkpoint, and
//! when a generation must end. [`Control::handle`] takes an [`Event`] and the current time and
//! returns the [`Action`]s to carry out; it does no I/O, reads no clock and holds no sockets,
//! so every policy is unit-tested without processes. The actors (next step) only translate
//! messages into events and actions into messages.

mod adopt;
mod decide;
mod local;
pub mod queue;
pub mod recovery;
mod requests;
mod state;
mod straggler;

pub use adopt::Adoption;
pub use decide::{Action, Ending, NoReplacement, StopReason};
pub use requests::{DrainCause, Refusal};
pub use state::{
    Control, Event, Generation, GenerationPlan, MAX_FAILED_STARTS, MAX_FINAL_CHECKPOINT_ATTEMPTS, Member, Policy, Rank, SUCCESSOR_WAIT_MS,
    Step, StragglerPolicy, WorkerId,
};
