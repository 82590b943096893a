//! epoll tokens: what an event in the supervisor's epoll set is about,
//! packed into the 64-bit user data (kind in the top byte).

/// What an epoll event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Signal,
    Timer,
    Inotify,
    Listen,
    /// The supervisor's own stdout or stderr became writable again.
    Sink(usize),
    /// A control connection.
    Conn(u64),
    /// Service `i`'s init reported on its sync socket (launch done).
    Sync(usize),
    /// Service `i`'s stdout (0) or stderr (1) pipe.
    Pipe(usize, usize),
    /// A probe's socket in flight.
    Probe(u64),
    /// Service `i`'s sd_notify socket.
    Notify(usize),
    /// Service `i`'s notify pipe (`notify: {"fd": N}`).
    Ready(usize),
}

const KIND_SHIFT: u32 = 56;
const INDEX_MASK: u64 = (1 << KIND_SHIFT) - 1;

impl Token {
    pub(crate) fn encode(self) -> u64 {
        let (kind, index) = match self {
            Token::Signal => (1, 0),
            Token::Timer => (2, 0),
            Token::Inotify => (3, 0),
            Token::Listen => (4, 0),
            Token::Sink(k) => (5, k as u64),
            Token::Conn(id) => (6, id),
            Token::Sync(i) => (7, i as u64),
            Token::Pipe(i, k) => (10, (i as u64) << 1 | (k as u64 & 1)),
            Token::Probe(id) => (11, id),
            Token::Notify(i) => (12, i as u64),
            Token::Ready(i) => (13, i as u64),
        };
        kind << KIND_SHIFT | (index & INDEX_MASK)
    }

    pub(crate) fn decode(v: u64) -> Option<Token> {
        let index = v & INDEX_MASK;
        let i = usize::try_from(index).ok()?;
        Some(match v >> KIND_SHIFT {
            1 => Token::Signal,
            2 => Token::Timer,
            3 => Token::Inotify,
            4 => Token::Listen,
            5 => Token::Sink(i),
            6 => Token::Conn(index),
            7 => Token::Sync(i),
            10 => Token::Pipe(i >> 1, i & 1),
            11 => Token::Probe(index),
            12 => Token::Notify(i),
            13 => Token::Ready(i),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let all = [
            Token::Signal,
            Token::Timer,
            Token::Inotify,
            Token::Listen,
            Token::Sink(1),
            Token::Conn(1 << 40),
            Token::Sync(7),
            Token::Sync(70_000),
            Token::Pipe(12, 1),
            Token::Pipe(12, 0),
            Token::Probe(3),
            Token::Notify(4),
            Token::Ready(5),
        ];
        for t in all {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
