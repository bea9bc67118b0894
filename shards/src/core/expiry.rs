//! MQTT 5 session expiry (sections 3.1.2.11.2 and 3.14.2.2.2): a session outlives its
//! connection by its Session Expiry Interval (0: it ends with the connection; 0xFFFFFFFF:
//! it never expires), which a DISCONNECT may change, except from 0 to anything else (a
//! Protocol Error). Expiry is checked lazily, at the device's next CONNECT, with the time
//! passed in: no timer. 3.1.1 sessions (Clean Session 0) do not expire.

use super::{ConnId, Core, DeviceIdx, Metrics};
use ingestd_codec::mqtt::{self, ReasonCode};

/// The interval that means "never expires".
const NEVER_S: u32 = u32::MAX;

/// When a session left by its connection at `now_us` expires (`None`: never).
#[must_use]
pub fn session_ends_at_us(expiry_s: u32, now_us: u64) -> Option<u64> {
    (expiry_s != NEVER_S).then(|| now_us.saturating_add(u64::from(expiry_s) * 1_000_000))
}

impl<M: Metrics> Core<M> {
    /// A DISCONNECT from the device: the connection ends; a v5 Session Expiry Interval in
    /// it replaces the CONNECT's, but may not turn 0 into anything else [MQTT-3.14.2-2]
    /// (`Err`: close with 0x82, the session ending as the CONNECT said).
    pub(super) fn on_disconnect(
        &mut self,
        conn: ConnId,
        disconnect: &mqtt::Disconnect<'_>,
    ) -> Result<(), Option<ReasonCode>> {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let asked = disconnect.properties.session_expiry_interval;
        if let (Some(current), Some(asked)) = (state.session_expiry_s, asked) {
            if current == 0 && asked != 0 {
                return Err(Some(ReasonCode::ProtocolError));
            }
            state.session_expiry_s = Some(asked);
        }
        state.closing = true;
        Ok(())
    }

    /// At a CONNECT of the device: a session whose expiry passed while no connection held
    /// it is gone [MQTT-3.2.2-3].
    pub(super) fn expire_session(&mut self, idx: DeviceIdx) {
        let now_us = self.now.mono_us;
        let device = &mut self.devices[idx.0 as usize];
        if device.conn.is_none() && device.session_ends_at_us.is_some_and(|at| now_us >= at) {
            device.session = crate::session::Session::new();
            device.session_exists = false;
            device.session_ends_at_us = None;
        }
    }

    /// The device's live connection ended: its session is kept (losing what was not yet
    /// acknowledged) until it expires, or ends now. `expiry_s` is the connection's v5
    /// interval as it stood at the end (`None` in 3.1.1).
    pub(super) fn end_session(&mut self, idx: DeviceIdx, expiry_s: Option<u32>) {
        let now_us = self.now.mono_us;
        let device = &mut self.devices[idx.0 as usize];
        let persistent = expiry_s.map_or(device.session_persistent, |s| s > 0);
        if persistent {
            device.session.drop_pending();
            device.session_ends_at_us = expiry_s.and_then(|s| session_ends_at_us(s, now_us));
        } else {
            device.session = crate::session::Session::new();
            device.session_exists = false;
            device.session_ends_at_us = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_at_the_interval_or_never() {
        assert_eq!(session_ends_at_us(0, 5), Some(5));
        assert_eq!(session_ends_at_us(2, 5), Some(2_000_005));
        assert_eq!(session_ends_at_us(u32::MAX, 5), None);
        assert_eq!(session_ends_at_us(u32::MAX - 1, u64::MAX), Some(u64::MAX));
    }
}
