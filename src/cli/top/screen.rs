//! The live view of `ferry top`: ratatui on crossterm, in the terminal's alternate screen,
//! redrawn once per interval; `q`, Esc or Ctrl-C quits and gives the terminal back as it
//! was, even when drawing fails.

use std::io::Stdout;
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::Show;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Table};

use super::Sample;
use super::rows::{HEADER, Row, cells};

/// The terminal as the view leaves it: normal mode, main screen, cursor shown.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, Show);
}

/// The terminal in raw mode on the alternate screen, restored when dropped, and before a
/// panic's message is printed (so that it stays readable on the main screen).
struct Screen(Terminal<CrosstermBackend<Stdout>>);

impl Screen {
    fn enter() -> std::io::Result<Self> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        // Restored on every failure from here on, whatever step failed.
        let entered = enable_raw_mode()
            .and_then(|()| execute!(std::io::stdout(), EnterAlternateScreen))
            .and_then(|()| Terminal::new(CrosstermBackend::new(std::io::stdout())));
        entered.map(Self).inspect_err(|_| restore())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Samples with `sample` every `interval` and draws what `view` makes of the last two,
/// until a quit key.
pub fn run(
    view: impl Fn(Option<&Sample>, &Sample) -> (Vec<String>, Vec<Row>),
    sample: impl Fn() -> Sample,
    interval: Duration,
) -> std::io::Result<()> {
    let mut screen = Screen::enter()?;
    let mut before: Option<Sample> = None;
    loop {
        let now = sample();
        let (lines, rows) = view(before.as_ref(), &now);
        screen
            .0
            .draw(|frame| draw(frame, &lines, &rows, interval))?;
        before = Some(now);
        if quit_within(interval)? {
            return Ok(());
        }
    }
}

/// Waits up to `interval` for a quit key; whether one came.
fn quit_within(interval: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + interval;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !event::poll(left)? {
            break;
        }
        if let Event::Key(key) = event::read()? {
            let ctrl_c =
                key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            let quit = matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c;
            if quit && key.kind == KeyEventKind::Press {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// One frame: a line per daemon, then the targets' table, troubled rows in colour.
fn draw(frame: &mut ratatui::Frame<'_>, lines: &[String], rows: &[Row], interval: Duration) {
    let [top, body] = Layout::vertical([
        Constraint::Length(lines.len() as u16 + 2),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    let title = format!(" ferry top: every {} ms, q quits ", interval.as_millis());
    let daemons = Paragraph::new(
        lines
            .iter()
            .map(|l| Line::from(l.as_str()))
            .collect::<Vec<_>>(),
    )
    .block(Block::bordered().title(title));
    frame.render_widget(daemons, top);
    let widths = [
        Constraint::Max(22),
        Constraint::Length(8),
        Constraint::Fill(1),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let table_rows = rows.iter().map(|row| {
        let style = match row.trouble() {
            2 => Style::new().fg(Color::Red),
            1 => Style::new().fg(Color::Yellow),
            _ => Style::new(),
        };
        TableRow::new(cells(row)).style(style)
    });
    let header = TableRow::new(HEADER).style(Style::new().add_modifier(Modifier::BOLD));
    let table = Table::new(table_rows, widths)
        .header(header)
        .block(Block::bordered().title(" targets, trouble first "));
    frame.render_widget(table, body);
}
