//! Collects the benchmark tables and prints them as Markdown.

struct Section {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

#[derive(Default)]
pub struct Report {
    sections: Vec<Section>,
}

impl Report {
    pub fn section(
        &mut self,
        title: &str,
        header: &[&str],
        rows: Vec<Vec<String>>,
        notes: Vec<String>,
    ) {
        self.sections.push(Section {
            title: title.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows,
            notes,
        });
    }

    pub fn print(&self) {
        for s in &self.sections {
            println!("\n## {}\n", s.title);
            println!("| {} |", s.header.join(" | "));
            println!(
                "|{}|",
                s.header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
            );
            for r in &s.rows {
                println!("| {} |", r.join(" | "));
            }
            for n in &s.notes {
                println!("\n{n}");
            }
        }
    }
}
