//! `xypriss top`: a live terminal view of a running pool, in the spirit of
//! `pm2 monit` and bpftop.
//!
//! It polls the pool's status through the control socket every [`POLL`] and
//! follows its event stream on a second connection, from a thread, for the
//! alerts. What it shows is [`model`] (pure, tested); how, [`draw`]. The
//! terminal is restored on every way out: a key, an error, a panic (ratatui's
//! hook), SIGTERM, SIGHUP or SIGINT (checked between frames).

mod draw;
pub mod model;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, Sender},
    },
    thread,
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
};

use self::model::Model;
use super::CommandError;
use crate::api::client::{Client, ClientError};

/// How often the status is polled.
pub const POLL: Duration = Duration::from_millis(500);

/// The longest wait for a key: how late a signal or an event may be shown.
const FRAME: Duration = Duration::from_millis(100);

/// How long the follower waits before it reconnects to a pool that went away.
const RECONNECT: Duration = Duration::from_secs(1);

/// What the follower thread hands over.
enum Followed {
    Line(String),
    /// The stream broke, and why; the thread tries again.
    Ended(String),
}

/// Runs the view of pool `name` until the operator quits.
pub fn run(name: &str) -> Result<(), CommandError> {
    // A pool that is not there is said plainly, before the screen is taken.
    let mut client = Client::connect(name)?;
    let mut model = Model::default();
    model.update(client.status()?);
    let quit = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&quit)).map_err(CommandError::Terminal)?;
    }
    let (tx, events) = mpsc::channel();
    follow(name.to_owned(), tx);
    let mut terminal = ratatui::try_init().map_err(CommandError::Terminal)?;
    let shown = show(
        &mut terminal,
        name,
        Some(client),
        &mut model,
        &events,
        &quit,
    );
    ratatui::restore();
    shown
}

fn show(
    terminal: &mut DefaultTerminal,
    name: &str,
    mut client: Option<Client>,
    model: &mut Model,
    events: &Receiver<Followed>,
    quit: &AtomicBool,
) -> Result<(), CommandError> {
    let mut next_poll = Instant::now() + POLL;
    loop {
        while let Ok(followed) = events.try_recv() {
            match followed {
                Followed::Line(line) => model.event(&line),
                Followed::Ended(why) => model.note(format!("event stream: {why}")),
            }
        }
        terminal
            .draw(|frame| draw::draw(frame, model))
            .map_err(CommandError::Terminal)?;
        if quit.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wait = next_poll
            .saturating_duration_since(Instant::now())
            .min(FRAME);
        if event::poll(wait).map_err(CommandError::Terminal)?
            && let Event::Key(key) = event::read().map_err(CommandError::Terminal)?
            && key.kind == KeyEventKind::Press
            && (matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c')
                    && key.modifiers.contains(KeyModifiers::CONTROL)))
        {
            return Ok(());
        }
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + POLL;
            let polled = match client.as_mut() {
                Some(c) => c.status(),
                // The pool went away; it may be back under the same name.
                None => Client::connect(name).and_then(|mut c| {
                    let status = c.status()?;
                    client = Some(c);
                    Ok(status)
                }),
            };
            match polled {
                Ok(status) => model.update(status),
                Err(err) => {
                    if !matches!(err, ClientError::Api { .. }) {
                        client = None;
                    }
                    model.failed(err.to_string());
                }
            }
        }
    }
}

/// Follows the pool's events on a thread of its own, reconnecting when the
/// stream breaks, until the receiver is gone.
fn follow(name: String, tx: Sender<Followed>) {
    thread::spawn(move || {
        let mut said = None;
        loop {
            let why = match Client::connect(&name).and_then(Client::follow) {
                Ok(lines) => {
                    let mut why = "the pool closed it".to_owned();
                    for line in lines {
                        match line {
                            Ok(line) => {
                                said = None;
                                if tx.send(Followed::Line(line)).is_err() {
                                    return;
                                }
                            }
                            Err(err) => {
                                why = err.to_string();
                                break;
                            }
                        }
                    }
                    why
                }
                Err(err) => err.to_string(),
            };
            // Said once, not at every attempt while the pool is away.
            if said.as_ref() != Some(&why) {
                said = Some(why.clone());
                if tx.send(Followed::Ended(why)).is_err() {
                    return;
                }
            }
            thread::sleep(RECONNECT);
        }
    });
}
