//! Questions about a [`Scene`] in the SGG-VQA forms of the Anatomy-R1 data, answered from the
//! scene's geometry.
//!
//! Three forms, worded as in `GRPO.json`:
//! - position: "What anatomy is at the top-left of the frame ?" (the structure covering most of the
//!   visible anatomy in that cell of a 3x3 grid);
//! - attribute: "What is the red anatomy?", "What is the brown top-mid anatomy?";
//! - relation: "What is the name of the anatomy that is both above the grasper object and left of
//!   the yellow omentum thing?" (left of/right of/above/below compare centroids, within compares
//!   robust bounding boxes).
//!
//! Every predicate is three-valued: a question is kept only when its answer satisfies it clearly
//! and every other visible structure clearly fails it, so borderline geometry never yields a
//! question whose answer a careful reader of the image could dispute.

use std::fmt::Write;

use crate::rng::SplitMix64;

use super::scene::{Facts, Object, Scene, Structure};

/// The question kinds, recorded with each question so results can be broken down by form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    Position,
    Attribute,
    Relation,
}

impl Form {
    pub fn key(self) -> &'static str {
        match self {
            Form::Position => "position",
            Form::Attribute => "attribute",
            Form::Relation => "relation",
        }
    }
}

/// One generated multiple-choice question.
#[derive(Clone, Debug, PartialEq)]
pub struct Asked {
    pub question: String,
    /// Four distinct anatomy names.
    pub options: Vec<String>,
    /// Index of the correct option.
    pub answer: usize,
    pub structure: Structure,
    pub form: Form,
}

/// Options per question, as in every Anatomy-R1 record.
pub const OPTIONS: usize = 4;

/// Smallest visible share of the frame for a structure to be an answer or a reference: smaller
/// slivers exist in the image but are too easy to miss.
const MIN_SHARE: f32 = 0.02;
/// Smallest visible share for an instrument to be referred to.
const MIN_TOOL_SHARE: f32 = 0.008;
/// A centroid this close (unit coordinates) to an inner grid line is in neither cell for sure.
const CELL_MARGIN: f32 = 0.03;
/// Centroids this far apart are clearly left of / above one another; closer than `REL_NO` clearly not.
const REL_YES: f32 = 0.1;
const REL_NO: f32 = 0.03;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Truth {
    Yes,
    No,
    Unclear,
}

fn and(a: Truth, b: Truth) -> Truth {
    match (a, b) {
        (Truth::No, _) | (_, Truth::No) => Truth::No,
        (Truth::Yes, Truth::Yes) => Truth::Yes,
        _ => Truth::Unclear,
    }
}

fn truth(yes: bool, no: bool) -> Truth {
    if yes {
        Truth::Yes
    } else if no {
        Truth::No
    } else {
        Truth::Unclear
    }
}

/// The nine cells of the 3x3 grid, named as in the data (`center` for the middle one).
pub const CELLS: [&str; 9] = [
    "top-left",
    "top-mid",
    "top-right",
    "mid-left",
    "center",
    "mid-right",
    "bottom-left",
    "bottom-mid",
    "bottom-right",
];

/// Whether a point lies in grid cell `cell`, unclear near an inner grid line.
fn in_cell(p: (f32, f32), cell: usize) -> Truth {
    let axis = |c: f32, k: usize| {
        let (lo, hi) = (k as f32 / 3.0, (k + 1) as f32 / 3.0);
        // The frame's own edges are not boundaries anything can be on the wrong side of.
        let lo_m = if k == 0 { f32::NEG_INFINITY } else { lo };
        let hi_m = if k == 2 { f32::INFINITY } else { hi };
        truth(
            c >= lo_m + CELL_MARGIN && c <= hi_m - CELL_MARGIN,
            c < lo_m - CELL_MARGIN || c > hi_m + CELL_MARGIN,
        )
    };
    and(axis(p.0, cell % 3), axis(p.1, cell / 3))
}

/// The cell a point is clearly in, if any.
fn cell_of(p: (f32, f32)) -> Option<usize> {
    (0..9).find(|&c| in_cell(p, c) == Truth::Yes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
    Within,
}

impl Relation {
    const ALL: [Relation; 5] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
        Relation::Within,
    ];

    fn phrases(self) -> &'static [&'static str] {
        match self {
            Relation::LeftOf => &["left of", "to the left of", "on the left side of"],
            Relation::RightOf => &["right of", "to the right of", "on the right side of"],
            Relation::Above => &["above"],
            Relation::Below => &["below"],
            Relation::Within => &["within"],
        }
    }

    fn holds(self, a: &Facts, b: &Facts) -> Truth {
        if a.object == b.object {
            return Truth::No;
        }
        let ahead = |d: f32| truth(d > REL_YES, d < REL_NO);
        match self {
            Relation::LeftOf => ahead(b.centroid.0 - a.centroid.0),
            Relation::RightOf => ahead(a.centroid.0 - b.centroid.0),
            Relation::Above => ahead(b.centroid.1 - a.centroid.1),
            Relation::Below => ahead(a.centroid.1 - b.centroid.1),
            Relation::Within => {
                let (a0, a1, a2, a3) = a.bbox;
                let (b0, b1, b2, b3) = b.bbox;
                let overhang = (b0 - a0).max(a2 - b2).max(b1 - a1).max(a3 - b3);
                truth(overhang <= 0.01, overhang > 0.05)
            }
        }
    }
}

/// How a question names an object: optional colour, optional cell, optional class key, and the
/// noun (`anatomy` only matches structures, `instrument` only tools, `thing`/`object` either).
#[derive(Clone, Debug)]
struct Description {
    colour: Option<&'static str>,
    cell: Option<usize>,
    key: Option<&'static str>,
    noun: &'static str,
}

struct View<'a> {
    scene: &'a Scene,
    facts: &'a [Facts],
}

impl View<'_> {
    fn colour(&self, o: Object) -> &'static str {
        match o {
            Object::Anatomy(s) => s.colour(),
            Object::Tool(_) => "silver",
        }
    }

    fn key(&self, o: Object) -> &'static str {
        match o {
            Object::Anatomy(s) => s.key(),
            Object::Tool(t) => self.scene.instruments[t].kind.key(),
        }
    }

    fn matches(&self, f: &Facts, d: &Description) -> Truth {
        let is_tool = matches!(f.object, Object::Tool(_));
        let mut t = truth(
            match d.noun {
                "anatomy" => !is_tool,
                "instrument" => is_tool,
                _ => true,
            },
            true,
        );
        if let Some(c) = d.colour {
            t = and(t, truth(self.colour(f.object) == c, true));
        }
        if let Some(k) = d.key {
            t = and(t, truth(self.key(f.object) == k, true));
        }
        if let Some(cell) = d.cell {
            t = and(t, in_cell(f.centroid, cell));
        }
        t
    }

    fn render(&self, d: &Description) -> String {
        let mut s = String::new();
        for part in [d.colour, d.cell.map(|c| CELLS[c]), d.key, Some(d.noun)]
            .into_iter()
            .flatten()
        {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(part);
        }
        s
    }

    /// Whether `d` picks out exactly `target` among all visible objects, clearly.
    fn identifies(&self, target: usize, d: &Description) -> bool {
        self.facts.iter().enumerate().all(|(i, f)| {
            let m = self.matches(f, d);
            if i == target {
                m == Truth::Yes
            } else {
                m == Truth::No
            }
        })
    }
}

fn pick<T: Copy>(rng: &mut SplitMix64, xs: &[T]) -> T {
    xs[rng.below(xs.len())]
}

/// Asks one question about `scene`, or `None` when no form yields an unambiguous one.
pub fn ask(scene: &Scene, facts: &[Facts], rng: &mut SplitMix64) -> Option<Asked> {
    ask_forms(scene, facts, rng, &[])
}

/// [`ask`] limited to `forms` (empty: all forms, in the real data's mix).
pub fn ask_forms(
    scene: &Scene,
    facts: &[Facts],
    rng: &mut SplitMix64,
    forms: &[Form],
) -> Option<Asked> {
    let view = View { scene, facts };
    // The real data is about half position questions; the rest split between the other forms.
    let first = match rng.below(20) {
        0..=8 => Form::Position,
        9..=13 => Form::Attribute,
        _ => Form::Relation,
    };
    let order = match first {
        Form::Position => [Form::Position, Form::Attribute, Form::Relation],
        Form::Attribute => [Form::Attribute, Form::Relation, Form::Position],
        Form::Relation => [Form::Relation, Form::Attribute, Form::Position],
    };
    for form in order {
        if !forms.is_empty() && !forms.contains(&form) {
            continue;
        }
        for _ in 0..12 {
            let got = match form {
                Form::Position => position(scene, rng),
                Form::Attribute => attribute(&view, rng),
                Form::Relation => relation(&view, rng),
            };
            if let Some((question, structure)) = got {
                return Some(with_options(question, structure, form, rng));
            }
        }
    }
    None
}

/// All six classes as the options, in [`Structure::ALL`]'s order, so that each class keeps its
/// letter (a small model then need not look its answer up among shuffled options).
pub fn with_all_options(mut asked: Asked) -> Asked {
    asked.options = Structure::ALL
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    asked.answer = Structure::ALL
        .iter()
        .position(|&s| s == asked.structure)
        .unwrap_or(0);
    asked
}

/// The correct name and three other classes, shuffled.
fn with_options(question: String, answer: Structure, form: Form, rng: &mut SplitMix64) -> Asked {
    let mut others: Vec<Structure> = Structure::ALL
        .iter()
        .copied()
        .filter(|&s| s != answer)
        .collect();
    rng.shuffle(&mut others);
    let mut chosen = vec![answer];
    chosen.extend_from_slice(&others[..OPTIONS - 1]);
    rng.shuffle(&mut chosen);
    let index = chosen.iter().position(|&s| s == answer).unwrap_or(0);
    Asked {
        question,
        options: chosen.iter().map(|s| s.name().to_string()).collect(),
        answer: index,
        structure: answer,
        form,
    }
}

/// Pixel counts of visible anatomy per class in grid cell `cell`.
pub fn cell_counts(scene: &Scene, cell: usize) -> [usize; 6] {
    let size = scene.size;
    let (r, c) = (cell / 3, cell % 3);
    let mut counts = [0usize; 6];
    for y in r * size / 3..(r + 1) * size / 3 {
        for x in c * size / 3..(c + 1) * size / 3 {
            let i = y * size + x;
            if scene.tool[i] == 0 {
                counts[scene.labels[i] as usize % 6] += 1;
            }
        }
    }
    counts
}

/// The structure that clearly dominates cell `cell`: most of the cell is visible anatomy, the
/// winner covers at least 60% of it and twice the runner-up.
pub fn dominant(scene: &Scene, cell: usize) -> Option<Structure> {
    let size = scene.size;
    let cell_px = (size / 3) * (size / 3);
    let counts = cell_counts(scene, cell);
    let visible: usize = counts.iter().sum();
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
    let (w, r) = (counts[order[0]], counts[order[1]]);
    (visible * 10 >= cell_px * 4 && w * 10 >= visible * 6 && w >= 2 * r)
        .then(|| Structure::ALL[order[0]])
}

/// The scene cell by cell, in reading order: "top-left Liver, top-mid Gut, ..., bottom-right
/// Omentum", each cell named by the structure that clearly dominates it ([`dominant`]) or `mixed`.
/// The position questions' answers are these cells' names, so a model that learns to write it
/// sees nine localisation examples per frame instead of the one a question asks.
pub fn caption(scene: &Scene) -> String {
    CELLS
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            format!(
                "{cell} {}",
                dominant(scene, i).map_or("mixed", |s| s.name())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn position(scene: &Scene, rng: &mut SplitMix64) -> Option<(String, Structure)> {
    let cell = rng.below(9);
    let s = dominant(scene, cell)?;
    Some((
        format!("What anatomy is at the {} of the frame ?", CELLS[cell]),
        s,
    ))
}

/// Indices into `facts` of structures big enough to be asked about.
fn answerable(view: &View) -> Vec<usize> {
    view.facts
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.object, Object::Anatomy(_)) && f.share >= MIN_SHARE)
        .map(|(i, _)| i)
        .collect()
}

fn structure_of(f: &Facts) -> Option<Structure> {
    match f.object {
        Object::Anatomy(s) => Some(s),
        Object::Tool(_) => None,
    }
}

fn attribute(view: &View, rng: &mut SplitMix64) -> Option<(String, Structure)> {
    let candidates = answerable(view);
    if candidates.is_empty() {
        return None;
    }
    let target = pick(rng, &candidates);
    let f = &view.facts[target];
    let s = structure_of(f)?;
    let cell = cell_of(f.centroid);
    let (colour, cell) = match rng.below(3) {
        0 => (Some(s.colour()), None),
        1 => (Some(s.colour()), Some(cell?)),
        _ => (None, Some(cell?)),
    };
    let d = Description {
        colour,
        cell,
        key: None,
        noun: "anatomy",
    };
    // The answer must be the only structure so described; instruments are not anatomy.
    if !view.identifies(target, &d) {
        return None;
    }
    Some((format!("What is the {}?", view.render(&d)), s))
}

fn relation(view: &View, rng: &mut SplitMix64) -> Option<(String, Structure)> {
    let candidates = answerable(view);
    if candidates.is_empty() {
        return None;
    }
    let target = pick(rng, &candidates);
    let answer = &view.facts[target];
    let s = structure_of(answer)?;
    let wanted = if rng.below(5) < 2 { 2 } else { 1 };

    let references: Vec<usize> = view
        .facts
        .iter()
        .enumerate()
        .filter(|&(i, f)| {
            i != target
                && match f.object {
                    Object::Anatomy(_) => f.share >= MIN_SHARE,
                    Object::Tool(_) => f.share >= MIN_TOOL_SHARE,
                }
        })
        .map(|(i, _)| i)
        .collect();
    let mut true_pairs: Vec<(usize, Relation)> = references
        .iter()
        .flat_map(|&r| Relation::ALL.iter().map(move |&rel| (r, rel)))
        .filter(|&(r, rel)| rel.holds(answer, &view.facts[r]) == Truth::Yes)
        .collect();
    if true_pairs.len() < wanted {
        return None;
    }
    rng.shuffle(&mut true_pairs);
    let mut used: Vec<(usize, Relation)> = Vec::new();
    for &(r, rel) in &true_pairs {
        if used.len() == wanted {
            break;
        }
        if used.iter().all(|&(u, _)| u != r) {
            used.push((r, rel));
        }
    }
    if used.len() < wanted {
        return None;
    }

    let head = Description {
        colour: (rng.below(4) == 0).then_some(s.colour()),
        cell: if rng.below(5) == 0 {
            cell_of(answer.centroid)
        } else {
            None
        },
        key: None,
        noun: pick(rng, &["anatomy", "thing", "object"]),
    };
    let mut clauses = Vec::new();
    for &(r, rel) in &used {
        let d = describe(view, r, rng)?;
        clauses.push(format!(
            "{} the {}",
            pick(rng, rel.phrases()),
            view.render(&d)
        ));
    }

    // Exactly the answer satisfies head and all clauses; every other structure clearly fails.
    for (i, f) in view.facts.iter().enumerate() {
        if !matches!(f.object, Object::Anatomy(_)) {
            continue;
        }
        let mut t = view.matches(f, &head);
        for &(r, rel) in &used {
            t = and(t, rel.holds(f, &view.facts[r]));
        }
        let ok = if i == target {
            t == Truth::Yes
        } else {
            t == Truth::No
        };
        if !ok {
            return None;
        }
    }

    let mut q = String::new();
    let head_text = view.render(&head);
    let opening = if rng.below(3) == 0 {
        "What name is the"
    } else {
        "What is the name of the"
    };
    if clauses.len() == 1 {
        if rng.below(2) == 0 {
            let _ = write!(q, "{opening} {head_text} that is {}?", clauses[0]);
        } else {
            let _ = write!(q, "{opening} {head_text} {}?", clauses[0]);
        }
    } else {
        let both = if rng.below(2) == 0 { "both " } else { "" };
        let _ = write!(
            q,
            "{opening} {head_text} that is {both}{} and {}?",
            clauses[0], clauses[1]
        );
    }
    Some((q, s))
}

/// A description that identifies reference `r` among all visible objects, varied like the data's
/// ("the grasper object", "the brown top-mid liver anatomy", "the yellow thing").
fn describe(view: &View, r: usize, rng: &mut SplitMix64) -> Option<Description> {
    let f = &view.facts[r];
    let is_tool = matches!(f.object, Object::Tool(_));
    let nouns: &[&'static str] = if is_tool {
        &["object", "instrument", "thing"]
    } else {
        &["anatomy", "thing", "object"]
    };
    let noun = pick(rng, nouns);
    let cell = cell_of(f.centroid);
    let mut d = Description {
        colour: (rng.below(2) == 0).then(|| view.colour(f.object)),
        cell: if rng.below(5) < 2 { cell } else { None },
        key: (rng.below(4) != 0).then(|| view.key(f.object)),
        noun,
    };
    if view.identifies(r, &d) {
        return Some(d);
    }
    // Fall back to the most specific description the geometry allows.
    d.key = Some(view.key(f.object));
    if view.identifies(r, &d) {
        return Some(d);
    }
    d.cell = cell;
    view.identifies(r, &d).then_some(d)
}
