//! POSIX signals as Fly's API names them. Requests may name a signal
//! (`"SIGTERM"`, `"TERM"`, any case) or give its number (fly-go's `Kill()`
//! sends `{"signal": 9}`); responses always use the `SIG*` name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! signals {
    ($($variant:ident = $num:literal, $name:literal;)*) => {
        /// A signal Hangar can deliver to a machine's main process.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Signal {
            $(
                #[doc = $name]
                $variant,
            )*
        }

        impl Signal {
            /// Every supported signal.
            pub const ALL: &'static [Signal] = &[$(Signal::$variant),*];

            /// The Linux signal number.
            pub fn number(self) -> i32 {
                match self { $(Signal::$variant => $num,)* }
            }

            /// The `SIG*` name.
            pub fn name(self) -> &'static str {
                match self { $(Signal::$variant => $name,)* }
            }

            /// The signal with this Linux number, if supported.
            pub fn from_number(n: i64) -> Option<Signal> {
                match n { $($num => Some(Signal::$variant),)* _ => None }
            }
        }
    };
}

signals! {
    Hup = 1, "SIGHUP";
    Int = 2, "SIGINT";
    Quit = 3, "SIGQUIT";
    Ill = 4, "SIGILL";
    Trap = 5, "SIGTRAP";
    Abrt = 6, "SIGABRT";
    Bus = 7, "SIGBUS";
    Fpe = 8, "SIGFPE";
    Kill = 9, "SIGKILL";
    Usr1 = 10, "SIGUSR1";
    Segv = 11, "SIGSEGV";
    Usr2 = 12, "SIGUSR2";
    Pipe = 13, "SIGPIPE";
    Alrm = 14, "SIGALRM";
    Term = 15, "SIGTERM";
    Chld = 17, "SIGCHLD";
    Cont = 18, "SIGCONT";
    Stop = 19, "SIGSTOP";
    Tstp = 20, "SIGTSTP";
    Ttin = 21, "SIGTTIN";
    Ttou = 22, "SIGTTOU";
    Urg = 23, "SIGURG";
    Xcpu = 24, "SIGXCPU";
    Xfsz = 25, "SIGXFSZ";
    Vtalrm = 26, "SIGVTALRM";
    Prof = 27, "SIGPROF";
    Winch = 28, "SIGWINCH";
    Io = 29, "SIGIO";
    Pwr = 30, "SIGPWR";
    Sys = 31, "SIGSYS";
}

/// The input named no signal Hangar knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

impl FromStr for Signal {
    type Err = UnknownSignal;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i64>() {
            return Signal::from_number(n).ok_or_else(|| UnknownSignal(s.to_owned()));
        }
        let upper = t.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        Signal::ALL
            .iter()
            .copied()
            .find(|sig| &sig.name()[3..] == bare)
            .ok_or_else(|| UnknownSignal(s.to_owned()))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Signal::from_number(n)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown signal {n}"))),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_and_numbers() {
        assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("term".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::Kill);
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert!("0".parse::<Signal>().is_err());
        let s: Signal = serde_json::from_str("9").unwrap();
        assert_eq!(s, Signal::Kill);
        let s: Signal = serde_json::from_str("\"SIGUSR1\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"SIGUSR1\"");
        for sig in Signal::ALL {
            assert_eq!(Signal::from_number(sig.number().into()), Some(*sig));
        }
    }
}
