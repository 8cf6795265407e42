//! Draws `xypriss top`'s [`Model`] with ratatui: the pool's header, a table of
//! workers with each one's resident-memory sparkline on its row, the alerts,
//! and the keys.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row as TableRow, Sparkline, Table},
};

use super::{
    POLL,
    model::{COLUMNS, HISTORY, Model, Mood},
};

/// The table's column widths, as [`COLUMNS`].
const WIDTHS: [u16; COLUMNS.len()] = [3, 8, 8, 14, 11, 8, 12, 8, 22];

fn colour(mood: Mood) -> Color {
    match mood {
        Mood::Good => Color::Green,
        Mood::Warning => Color::Yellow,
        Mood::Bad => Color::Red,
    }
}

pub fn draw(frame: &mut Frame, model: &Model) {
    let (header, mood) = model.header();
    let [top, workers, alerts, keys] = Layout::vertical([
        Constraint::Length(header.len() as u16 + 2),
        Constraint::Min(4),
        Constraint::Length(10),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let mut lines: Vec<Line> = header.into_iter().map(Line::from).collect();
    if let Some(last) = lines.pop() {
        lines.push(last.style(Style::new().fg(colour(mood))));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" xypriss top ")),
        top,
    );

    draw_workers(frame, model, workers);

    let alert_lines: Vec<Line> = model.alerts().map(Line::from).collect();
    frame.render_widget(
        Paragraph::new(alert_lines).block(Block::bordered().title(" alerts (UTC, newest first) ")),
        alerts,
    );
    frame.render_widget(
        Line::from(" q quit").style(Style::new().add_modifier(Modifier::DIM)),
        keys,
    );
}

/// The workers' table, and beside each row its sparkline.
fn draw_workers(frame: &mut Frame, model: &Model, area: Rect) {
    let block = Block::bordered().title(" workers ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let table_width = WIDTHS.iter().sum::<u16>() + WIDTHS.len() as u16;
    let [table_area, spark_area] =
        Layout::horizontal([Constraint::Length(table_width), Constraint::Min(0)]).areas(inner);

    let rows = model.rows();
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let table = Table::new(
        rows.iter().map(|row| {
            TableRow::new(row.cells.iter().map(String::as_str))
                .style(Style::new().fg(colour(row.mood)))
        }),
        WIDTHS.map(Constraint::Length),
    )
    .header(TableRow::new(COLUMNS.map(|c| c.heading())).style(bold));
    frame.render_widget(table, table_area);

    if spark_area.width == 0 || spark_area.height == 0 {
        return;
    }
    let seconds = POLL.as_secs_f64() * HISTORY as f64;
    frame.render_widget(
        Line::from(format!("RSS, last {seconds:.0} s")).style(bold),
        Rect {
            height: 1,
            ..spark_area
        },
    );
    // Row i of the table is on line i + 1, below its header.
    for (i, row) in rows.iter().enumerate() {
        let y = spark_area.y + 1 + i as u16;
        if y >= spark_area.bottom() {
            break;
        }
        let Some(history) = model.history(row.pid) else {
            continue;
        };
        let points: Vec<u64> = history.latest(usize::from(spark_area.width)).collect();
        frame.render_widget(
            Sparkline::default()
                .data(points)
                .style(Style::new().fg(colour(row.mood))),
            Rect {
                y,
                height: 1,
                ..spark_area
            },
        );
    }
}
