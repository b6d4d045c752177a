//! What Tencent's history says occupied a gap: pages of `group_msg_get_simple` from the gap's
//! top down (newest first, 20 at most per call), each seq classified as a message to backfill,
//! a settled seq (system notice or placeholder), or part of an unrecoverable range.

use super::tracker::Gap;
use crate::tencent::rest::group::{HistoryMessage, HistoryPage, EXPIRED, FINISHED, MAX_PAGE};
use crate::tencent::rest::{RestClient, RestError};

/// Why a range of seqs cannot be repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Audio-video groups (AVChatRoom) keep no history.
    NoHistory,
    /// Older than the app's history retention (`IsFinished` 2).
    Expired,
    /// Tencent's history has nothing at these seqs.
    NotFound,
    /// The group was dismissed (10010).
    GroupGone,
    /// Tencent refused the lookup itself (10015 invalid group id, or another refusal that a
    /// retry would not change).
    Refused,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoHistory => "no_history",
            Reason::Expired => "expired",
            Reason::NotFound => "not_found",
            Reason::GroupGone => "group_gone",
            Reason::Refused => "refused",
        }
    }
}

/// What a settled seq held: it was never lost, but has no message to backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// `IsSystemMsg` 1: a member joined, the group was renamed, ...
    System,
    /// `IsPlaceMsg` 1 or 2: deleted, expired, failed or recalled.
    Placeholder,
}

/// Why a seq of a repaired gap has no message: settled, or unrecoverable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Settled(Settled),
    Unrecoverable(Reason),
}

/// The answer for one gap.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Resolution {
    /// Real messages, oldest first: to publish.
    pub backfill: Vec<HistoryMessage>,
    /// Seqs that held a system notice or a placeholder.
    pub settled: Vec<(u64, Settled)>,
    /// `(first, last, reason)`, ascending.
    pub unrecoverable: Vec<(u64, u64, Reason)>,
    /// The gap reached at or past Tencent's `NextMsgSeq`: the record that opened it carries a
    /// seq Tencent has not assigned (a forgery); those seqs were refused, not walked.
    pub beyond_tencent: bool,
}

/// The group types without history.
pub fn keeps_no_history(kind: &str) -> bool {
    matches!(kind, "AVChatRoom" | "BChatRoom" | "Live")
}

/// Looks `gap` up in Tencent's history.
pub async fn resolve(client: &RestClient, gap: &Gap) -> Result<Resolution, RestError> {
    let mut out = Resolution::default();
    if keeps_no_history(&gap.kind) {
        out.unrecoverable
            .push((gap.first, gap.last, Reason::NoHistory));
        return Ok(out);
    }
    let mut top = gap.last;
    // A gap of more than a page costs a walk: first ask where the group really is. Seqs at or
    // past its NextMsgSeq do not exist yet, so a forged record far ahead cannot make the
    // auditor spend the app's REST quota on them. (Topics share their community's seq space:
    // not checked.)
    if gap.last - gap.first >= u64::from(MAX_PAGE) && gap.key.topic.is_none() {
        let info = client.group_info(&[gap.key.group.as_str()]).await?;
        let next = info
            .iter()
            .find(|i| i.group_id == gap.key.group && i.error_code == 0)
            .map_or(0, |i| i.next_msg_seq);
        if next > 0 && gap.last >= next {
            let from = gap.first.max(next);
            tracing::warn!(group = %gap.key.group, first = from, last = gap.last, next_msg_seq = next,
                "audit: seqs past Tencent's NextMsgSeq: the record that opened this gap is forged; refused, not walked");
            out.unrecoverable.push((from, gap.last, Reason::Refused));
            out.beyond_tencent = true;
            if from == gap.first {
                return Ok(out);
            }
            top = from - 1;
        }
    }
    loop {
        let count = (top - gap.first + 1).min(u64::from(MAX_PAGE)) as u32;
        let page = match client
            .history(&gap.key.group, gap.key.topic.as_deref(), top, count)
            .await
        {
            Ok(page) => page,
            Err(RestError::GroupGone) => {
                out.unrecoverable.push((gap.first, top, Reason::GroupGone));
                break;
            }
            Err(RestError::Refused { code, info }) => {
                tracing::warn!(group = %gap.key.group, code, info, "audit: Tencent refused a history lookup");
                out.unrecoverable.push((gap.first, top, Reason::Refused));
                break;
            }
            Err(err) => return Err(err),
        };
        match take_page(gap.first, top, &page, &mut out) {
            Some(next) => top = next,
            None => break,
        }
    }
    out.backfill.sort_by_key(|m| m.msg_seq);
    out.settled.sort_unstable_by_key(|(seq, _)| *seq);
    out.unrecoverable.sort_by_key(|r| r.0);
    Ok(out)
}

/// Classifies one page for `first..=top`; returns the next top when more pages are needed.
fn take_page(first: u64, top: u64, page: &HistoryPage, out: &mut Resolution) -> Option<u64> {
    let mut expected = top;
    let mut lowest = None;
    // Newest first; whatever Tencent skipped between two returned seqs was not found.
    let mut list: Vec<&HistoryMessage> = page
        .rsp_msg_list
        .iter()
        .filter(|m| m.msg_seq >= first && m.msg_seq <= top)
        .collect();
    list.sort_by_key(|m| std::cmp::Reverse(m.msg_seq));
    list.dedup_by_key(|m| m.msg_seq);
    for m in list {
        if m.msg_seq < expected {
            out.unrecoverable
                .push((m.msg_seq + 1, expected, Reason::NotFound));
        }
        if m.is_system_msg != 0 {
            out.settled.push((m.msg_seq, Settled::System));
        } else if m.is_settled() {
            out.settled.push((m.msg_seq, Settled::Placeholder));
        } else {
            out.backfill.push(m.clone());
        }
        lowest = Some(m.msg_seq);
        expected = m.msg_seq.saturating_sub(1);
    }
    let rest_reason = match page.is_finished {
        EXPIRED => Some(Reason::Expired),
        FINISHED => Some(Reason::NotFound),
        _ if lowest.is_none() => Some(Reason::NotFound),
        _ => None,
    };
    match lowest {
        Some(low) if low <= first => None,
        _ if expected < first => None,
        _ => match rest_reason {
            Some(reason) => {
                out.unrecoverable.push((first, expected, reason));
                None
            }
            None => Some(expected),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, system: u8, place: u8) -> HistoryMessage {
        HistoryMessage {
            from_account: "u".into(),
            is_place_msg: place,
            is_system_msg: system,
            msg_priority: None,
            msg_random: seq * 7,
            msg_seq: seq,
            msg_time_stamp: 1_700_000_000,
            msg_body: serde_json::json!([]),
            cloud_custom_data: None,
        }
    }

    fn page(finished: u8, seqs: &[HistoryMessage]) -> HistoryPage {
        HistoryPage {
            is_finished: finished,
            rsp_msg_list: seqs.to_vec(),
        }
    }

    #[test]
    fn messages_notices_and_holes_are_told_apart() {
        let mut out = Resolution::default();
        // Gap 3..=8: Tencent has 8, 7 (system), 5 (placeholder), 4; nothing at 6; more below.
        let p = page(0, &[msg(8, 0, 0), msg(7, 1, 0), msg(5, 0, 1), msg(4, 0, 0)]);
        assert_eq!(take_page(3, 8, &p, &mut out), Some(3));
        let p = page(0, &[msg(3, 0, 0), msg(2, 0, 0)]);
        assert_eq!(take_page(3, 3, &p, &mut out), None);
        let seqs: Vec<u64> = out.backfill.iter().map(|m| m.msg_seq).collect();
        assert_eq!(seqs, vec![8, 4, 3]);
        assert_eq!(
            out.settled,
            vec![(7, Settled::System), (5, Settled::Placeholder)]
        );
        assert_eq!(out.unrecoverable, vec![(6, 6, Reason::NotFound)]);
    }

    #[test]
    fn an_expired_rest_is_unrecoverable() {
        let mut out = Resolution::default();
        let p = page(EXPIRED, &[msg(10, 0, 0)]);
        assert_eq!(take_page(1, 10, &p, &mut out), None);
        assert_eq!(out.unrecoverable, vec![(1, 9, Reason::Expired)]);
        let mut out = Resolution::default();
        assert_eq!(take_page(1, 10, &page(EXPIRED, &[]), &mut out), None);
        assert_eq!(out.unrecoverable, vec![(1, 10, Reason::Expired)]);
    }

    #[test]
    fn an_empty_page_ends_the_lookup() {
        let mut out = Resolution::default();
        assert_eq!(take_page(5, 6, &page(0, &[]), &mut out), None);
        assert_eq!(out.unrecoverable, vec![(5, 6, Reason::NotFound)]);
    }
}
