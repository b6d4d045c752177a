//! Every callback command Tencent documents, in one table: what keeps its events in order with
//! the rest of their group's or user's (the partition key), what identifies one event (the dedup
//! id), and whether Tencent waits on its answer (a before-callback). The README's command table
//! is held to this one by a test.

/// Where a command's partition key comes from. When the field is absent, the app id is the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `GroupId`: a group's events stay with its messages.
    GroupId,
    /// `From_Account`: a user's events stay together.
    FromAccount,
    /// `Report_Account`: who read the messages (`C2C.CallbackAfterMsgReport`).
    ReportAccount,
    /// `Info.To_Account`: whose login state changed (`State.StateChange`).
    StateAccount,
    /// The app id: app-wide events (and commands not in this table) in one partition.
    App,
}

/// Which fields identify one event, so that a redelivered callback is dropped as a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// No stable identity is documented: no dedup id.
    None,
    /// `g:` (SdkAppid, GroupId, TopicId, MsgSeq, MsgId).
    GroupMessage,
    /// `c:` (SdkAppid, From_Account, To_Account, MsgKey).
    C2cMessage,
    /// `r:` (SdkAppid, GroupId, TopicId, the recalled `MsgSeqList`).
    GroupRecall,
    /// `w:` (SdkAppid, From_Account, To_Account, MsgKey).
    C2cRecall,
    /// `j:` (SdkAppid, GroupId, EventTime, the new members).
    MemberJoin,
    /// `x:` (SdkAppid, GroupId, EventTime, the members who left).
    MemberExit,
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub key: Key,
    pub identity: Identity,
}

impl Spec {
    /// Tencent waits on the answer to let the user's action go ahead.
    pub fn is_before(&self) -> bool {
        is_before(self.name)
    }
}

/// Whether Tencent waits on the answer to `command` (a `CallbackBefore…` or `CallbackPrev…`),
/// listed or not.
pub fn is_before(command: &str) -> bool {
    command.contains(".CallbackBefore") || command.contains(".CallbackPrev")
}

const fn spec(name: &'static str, key: Key, identity: Identity) -> Spec {
    Spec {
        name,
        key,
        identity,
    }
}

use Identity as I;
use Key as K;

pub const COMMANDS: &[Spec] = &[
    spec("Group.CallbackAfterSendMsg", K::GroupId, I::GroupMessage),
    spec("Group.CallbackBeforeSendMsg", K::GroupId, I::None),
    spec("Group.CallbackAfterRecallMsg", K::GroupId, I::GroupRecall),
    spec("Group.CallbackSendMsgException", K::GroupId, I::None),
    spec("Group.CallbackAfterReadReceipt", K::GroupId, I::None),
    spec("Group.CallbackAfterGroupMsgExtension", K::GroupId, I::None),
    spec("Group.CallbackBeforeCreateGroup", K::GroupId, I::None),
    spec("Group.CallbackAfterCreateGroup", K::GroupId, I::None),
    spec("Group.CallbackBeforeApplyJoinGroup", K::GroupId, I::None),
    spec("Group.CallbackBeforeInviteJoinGroup", K::GroupId, I::None),
    spec(
        "Group.CallbackAfterNewMemberJoin",
        K::GroupId,
        I::MemberJoin,
    ),
    spec("Group.CallbackAfterMemberExit", K::GroupId, I::MemberExit),
    spec("Group.CallbackAfterGroupDestroyed", K::GroupId, I::None),
    spec("Group.CallbackAfterGroupInfoChanged", K::GroupId, I::None),
    spec("Group.CallbackOnMemberStateChange", K::GroupId, I::None),
    spec("Group.CallbackAfterCreateTopic", K::GroupId, I::None),
    spec("Group.CallbackAfterTopicDestroyed", K::GroupId, I::None),
    spec("Group.CallbackAfterTopicInfoChanged", K::GroupId, I::None),
    spec("C2C.CallbackBeforeSendMsg", K::FromAccount, I::None),
    spec("C2C.CallbackAfterSendMsg", K::FromAccount, I::C2cMessage),
    spec("C2C.CallbackAfterMsgReport", K::ReportAccount, I::None),
    spec("C2C.CallbackAfterMsgWithDraw", K::FromAccount, I::C2cRecall),
    spec("State.StateChange", K::StateAccount, I::None),
    spec("Profile.CallbackPortraitSet", K::FromAccount, I::None),
    spec("Sns.CallbackFriendAdd", K::App, I::None),
    spec("Sns.CallbackFriendDelete", K::App, I::None),
    spec("Sns.CallbackBlackListAdd", K::App, I::None),
    spec("Sns.CallbackBlackListDelete", K::App, I::None),
    spec("Sns.CallbackPrevFriendAdd", K::App, I::None),
    spec("Sns.CallbackPrevFriendResponse", K::App, I::None),
    spec("Alert.RequestOverLimit", K::App, I::None),
];

/// The table's entry for `command`, when Tencent documents it.
pub fn lookup(command: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|spec| spec.name == command)
}

impl Key {
    fn describe(self) -> &'static str {
        match self {
            Key::GroupId => "`GroupId`",
            Key::FromAccount => "`From_Account`",
            Key::ReportAccount => "`Report_Account`",
            Key::StateAccount => "`Info.To_Account`",
            Key::App => "`SdkAppid`",
        }
    }
}

impl Identity {
    fn describe(self) -> &'static str {
        match self {
            Identity::None => "—",
            Identity::GroupMessage => "`g:` SdkAppid, GroupId, TopicId, MsgSeq, MsgId",
            Identity::C2cMessage => "`c:` SdkAppid, From_Account, To_Account, MsgKey",
            Identity::GroupRecall => "`r:` SdkAppid, GroupId, TopicId, MsgSeqList",
            Identity::C2cRecall => "`w:` SdkAppid, From_Account, To_Account, MsgKey",
            Identity::MemberJoin => "`j:` SdkAppid, GroupId, EventTime, new members",
            Identity::MemberExit => "`x:` SdkAppid, GroupId, EventTime, members who left",
        }
    }
}

/// The README's row for `spec`.
pub fn readme_row(spec: &Spec) -> String {
    format!(
        "| `{}` | {} | {} | {} |",
        spec.name,
        spec.key.describe(),
        spec.identity.describe(),
        if spec.is_before() { "yes" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_callbacks_are_told_from_the_others() {
        for before in [
            "Group.CallbackBeforeSendMsg",
            "C2C.CallbackBeforeSendMsg",
            "Group.CallbackBeforeCreateGroup",
            "Group.CallbackBeforeApplyJoinGroup",
            "Group.CallbackBeforeInviteJoinGroup",
            "Sns.CallbackPrevFriendAdd",
            "Sns.CallbackPrevFriendResponse",
        ] {
            assert!(is_before(before), "{before}");
        }
        for after in [
            "Group.CallbackAfterSendMsg",
            "C2C.CallbackAfterSendMsg",
            "State.StateChange",
            "Sns.CallbackFriendAdd",
        ] {
            assert!(!is_before(after), "{after}");
        }
    }

    #[test]
    fn the_readme_command_table_is_this_table() {
        let section = crate::core::readme::section("### Commands");
        let documented: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
        let expected: Vec<String> = COMMANDS.iter().map(readme_row).collect();
        assert_eq!(
            documented,
            expected,
            "README rows (left) vs the table (right); the right ones are:\n{}",
            expected.join("\n")
        );
    }

    #[test]
    fn names_are_unique() {
        let names: std::collections::HashSet<_> = COMMANDS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), COMMANDS.len());
    }
}
