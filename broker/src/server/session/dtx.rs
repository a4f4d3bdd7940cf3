//! The `dtx` commands of a session: which branch the session works in (and which it
//! suspended), mapped onto the broker's branches with qpidd's checks and error codes.

use std::collections::HashMap;
use std::time::Instant;

use crate::core::dtx::{BufferId, XaStatus, Xid};
use crate::core::{Broker, Error};
use crate::wire::{
    self, Array, Command, DtxXaStatus, GetTimeoutResult, RecoverResult, Struct32, Value, XaResult,
};

/// A session's place in distributed transactions.
#[derive(Debug, Default)]
pub(super) struct DtxState {
    /// `dtx.select` was given.
    selected: bool,
    /// The branch the session works in now, and its buffer there.
    pub current: Option<(Xid, BufferId)>,
    /// Branches this session suspended (only it may resume them).
    suspended: HashMap<Xid, BufferId>,
}

/// The branch a command names.
fn xid(x: Option<wire::Xid>) -> Result<Xid, Error> {
    let x = x.ok_or_else(|| Error::CommandInvalid("no xid given".into()))?;
    Ok(Xid {
        format: x.format.unwrap_or(0),
        global: x.global_id.unwrap_or_default(),
        branch: x.branch_id.unwrap_or_default(),
    })
}

fn result(status: XaStatus) -> Option<Struct32> {
    Some(
        XaResult {
            status: Some(DtxXaStatus(status as u16)),
        }
        .to_struct32(),
    )
}

fn not_selected() -> Error {
    Error::CommandInvalid("the session is not selected for distributed transactions".into())
}

impl DtxState {
    /// Carries out one `dtx` command; its result, if it has one.
    pub fn command(
        &mut self,
        broker: &Broker,
        command: Command,
    ) -> Result<Option<Struct32>, Error> {
        match command {
            Command::DtxSelect(_) => {
                self.selected = true;
                Ok(None)
            }
            Command::DtxStart(s) => {
                if s.join && s.resume {
                    return Err(Error::CommandInvalid(
                        "dtx.start with both join and resume".into(),
                    ));
                }
                if !self.selected {
                    return Err(not_selected());
                }
                let x = xid(s.xid)?;
                if s.resume {
                    let buffer = self.suspended.remove(&x).ok_or_else(|| {
                        Error::CommandInvalid(format!(
                            "transaction branch {x:?} was not suspended by this session"
                        ))
                    })?;
                    let status = broker.dtx_resume(buffer);
                    if status == XaStatus::Ok {
                        self.current = Some((x, buffer));
                    }
                    return Ok(result(status));
                }
                if let Some((held, _)) = &self.current {
                    return Err(Error::IllegalState(format!(
                        "the session already works in transaction branch {held:?}"
                    )));
                }
                let buffer = if s.join {
                    match broker.dtx_join(&x)? {
                        Ok(b) => b,
                        Err(status) => return Ok(result(status)),
                    }
                } else {
                    broker.dtx_start(&x, Instant::now())?
                };
                self.current = Some((x, buffer));
                Ok(result(XaStatus::Ok))
            }
            Command::DtxEnd(e) => {
                let x = xid(e.xid)?;
                let (current, buffer) = self.current.clone().ok_or_else(|| {
                    Error::IllegalState(
                        "no transaction branch is associated with the session".into(),
                    )
                })?;
                if current != x {
                    return Err(Error::CommandInvalid(format!(
                        "transaction branch {x:?} is not the one associated with the session"
                    )));
                }
                self.current = None;
                let status = broker.dtx_end(buffer, e.fail, e.suspend && !e.fail);
                if e.fail && e.suspend {
                    // The branch is failed all the same: it can only be rolled back now.
                    return Err(Error::CommandInvalid(
                        "dtx.end with both fail and suspend".into(),
                    ));
                }
                if e.suspend && status == XaStatus::Ok {
                    self.suspended.insert(x, buffer);
                }
                Ok(result(status))
            }
            Command::DtxCommit(c) => Ok(result(broker.dtx_commit(&xid(c.xid)?, c.one_phase)?)),
            Command::DtxPrepare(p) => Ok(result(broker.dtx_prepare(&xid(p.xid)?)?)),
            Command::DtxRollback(r) => Ok(result(broker.dtx_rollback(&xid(r.xid)?)?)),
            Command::DtxForget(_) => Err(Error::NotImplemented(
                "dtx.forget: branches are never completed heuristically".into(),
            )),
            Command::DtxGetTimeout(g) => {
                let timeout = broker.dtx_get_timeout(&xid(g.xid)?)?;
                Ok(Some(
                    GetTimeoutResult {
                        timeout: Some(timeout),
                    }
                    .to_struct32(),
                ))
            }
            Command::DtxSetTimeout(t) => {
                let x = xid(t.xid)?;
                broker.dtx_set_timeout(&x, t.timeout.unwrap_or(0), Instant::now())?;
                Ok(None)
            }
            Command::DtxRecover(_) => {
                let items = broker
                    .dtx_in_doubt()
                    .into_iter()
                    .map(|x| {
                        Value::Struct32(
                            wire::Xid {
                                format: Some(x.format),
                                global_id: Some(x.global),
                                branch_id: Some(x.branch),
                            }
                            .to_struct32(),
                        )
                    })
                    .collect();
                Ok(Some(
                    RecoverResult {
                        in_doubt: Some(Array {
                            type_code: 0xab,
                            items,
                        }),
                    }
                    .to_struct32(),
                ))
            }
            other => Err(Error::NotImplemented(format!(
                "{} is not a dtx command",
                other.name()
            ))),
        }
    }

    /// The session is going away: a branch it still works in can only roll back now.
    pub fn closed(&mut self, broker: &Broker) {
        if let Some((_, buffer)) = self.current.take() {
            broker.dtx_fail(buffer);
        }
    }
}
