//! Expressions: `sqlparser`'s expressions resolved against a scope of columns, type-checked
//! into [`Scalar`] trees and evaluated on rows. Aggregate calls are collected by the
//! compiler when a query groups, and stand for their results' columns afterwards.

use std::sync::Arc;

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart,
    Subscript, UnaryOperator, Value as SqlValue,
};

use crate::SqlError;
use crate::agg::{AggCall, AggFunc};
use crate::format::parse_text;
use crate::parser::ident;
use crate::types::{SqlType, Value};

/// A column the scope can resolve: `qualifier.name` (the source's alias or name) or `name`.
#[derive(Debug, Clone)]
pub struct ScopeColumn {
    pub qualifier: Option<String>,
    pub name: String,
    pub ty: SqlType,
    /// Pseudo columns (ROWTIME ...) are left out of `*`.
    pub hidden: bool,
}

/// The columns an expression sees, in row order.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub columns: Vec<ScopeColumn>,
    /// Whether WINDOWSTART and WINDOWEND mean something (a windowed aggregation).
    pub windowed: bool,
}

impl Scope {
    fn resolve(&self, qualifier: Option<&str>, name: &str) -> Result<usize, SqlError> {
        let found: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name == name && (qualifier.is_none() || c.qualifier.as_deref() == qualifier))
            .map(|(i, _)| i)
            .collect();
        match found[..] {
            [i] => Ok(i),
            [] => {
                let full = qualifier.map_or(name.to_string(), |q| format!("{q}.{name}"));
                Err(SqlError::NotFound(format!("column '{full}' cannot be resolved")))
            }
            _ => Err(SqlError::Invalid(format!(
                "column '{name}' is ambiguous: qualify it with its source's name or alias"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A typed, resolved expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Column(usize),
    Literal(Value),
    Neg(Box<Scalar>),
    Arith(Arith, Box<Scalar>, Box<Scalar>),
    Concat(Box<Scalar>, Box<Scalar>),
    Cmp(Cmp, Box<Scalar>, Box<Scalar>),
    And(Box<Scalar>, Box<Scalar>),
    Or(Box<Scalar>, Box<Scalar>),
    Not(Box<Scalar>),
    IsNull(Box<Scalar>, bool),
    Like {
        expr: Box<Scalar>,
        pattern: Box<Scalar>,
        negated: bool,
    },
    Between {
        expr: Box<Scalar>,
        low: Box<Scalar>,
        high: Box<Scalar>,
        negated: bool,
    },
    In {
        expr: Box<Scalar>,
        list: Vec<Scalar>,
        negated: bool,
    },
    Case {
        whens: Vec<(Scalar, Scalar)>,
        otherwise: Option<Box<Scalar>>,
    },
    Cast(Box<Scalar>, SqlType),
    Call(Func, Vec<Scalar>),
    /// `struct->field`
    Field(Box<Scalar>, String),
    /// `array[i]` (1-based, negative from the end) or `map['key']`.
    Subscript(Box<Scalar>, Box<Scalar>),
    Array(Vec<Scalar>),
    /// An aggregate's result (its index among the query's aggregate calls).
    Agg(usize),
    WindowStart,
    WindowEnd,
}

/// Scalar functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Lcase,
    Ucase,
    Len,
    Trim,
    Ltrim,
    Rtrim,
    Substring,
    Replace,
    Instr,
    Concat,
    ConcatWs,
    Split,
    Lpad,
    Rpad,
    Initcap,
    Abs,
    Ceil,
    Floor,
    Round,
    Sqrt,
    Exp,
    Ln,
    Power,
    Sign,
    Coalesce,
    Ifnull,
    Nullif,
    UnixTimestamp,
    UnixDate,
    TimestampToString,
    StringToTimestamp,
    FormatTimestamp,
    ParseTimestamp,
    FromUnixtime,
    FormatDate,
    ParseDate,
    DateToString,
    StringToDate,
    ExtractJsonField,
    ArrayLength,
    ArrayContains,
}

fn func_named(name: &str) -> Option<Func> {
    use Func::*;
    Some(match name {
        "LCASE" | "LOWER" => Lcase,
        "UCASE" | "UPPER" => Ucase,
        "LEN" | "LENGTH" => Len,
        "TRIM" => Trim,
        "LTRIM" => Ltrim,
        "RTRIM" => Rtrim,
        "SUBSTRING" | "SUBSTR" => Substring,
        "REPLACE" => Replace,
        "INSTR" => Instr,
        "CONCAT" => Concat,
        "CONCAT_WS" => ConcatWs,
        "SPLIT" => Split,
        "LPAD" => Lpad,
        "RPAD" => Rpad,
        "INITCAP" => Initcap,
        "ABS" => Abs,
        "CEIL" | "CEILING" => Ceil,
        "FLOOR" => Floor,
        "ROUND" => Round,
        "SQRT" => Sqrt,
        "EXP" => Exp,
        "LN" => Ln,
        "POWER" | "POW" => Power,
        "SIGN" => Sign,
        "COALESCE" => Coalesce,
        "IFNULL" => Ifnull,
        "NULLIF" => Nullif,
        "UNIX_TIMESTAMP" => UnixTimestamp,
        "UNIX_DATE" => UnixDate,
        "TIMESTAMPTOSTRING" => TimestampToString,
        "STRINGTOTIMESTAMP" => StringToTimestamp,
        "FORMAT_TIMESTAMP" => FormatTimestamp,
        "PARSE_TIMESTAMP" => ParseTimestamp,
        "FROM_UNIXTIME" => FromUnixtime,
        "FORMAT_DATE" => FormatDate,
        "PARSE_DATE" => ParseDate,
        "DATETOSTRING" => DateToString,
        "STRINGTODATE" => StringToDate,
        "EXTRACTJSONFIELD" => ExtractJsonField,
        "ARRAY_LENGTH" => ArrayLength,
        "ARRAY_CONTAINS" => ArrayContains,
        _ => return None,
    })
}

/// Where aggregate calls go while compiling a grouping query's expressions.
pub type AggSink<'a> = Option<&'a mut Vec<AggCall>>;

/// Compiles `e` in `scope`; aggregate calls go to `aggs` (an error without one).
pub fn compile(e: &Expr, scope: &Scope, aggs: &mut AggSink<'_>) -> Result<(Scalar, SqlType), SqlError> {
    let c = |e: &Expr, aggs: &mut AggSink<'_>| compile(e, scope, aggs);
    Ok(match e {
        Expr::Identifier(i) => column(scope, None, &ident(i))?,
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [q, n] => column(scope, Some(&ident(q)), &ident(n))?,
            _ => return Err(SqlError::Invalid(format!("'{e}': write source.column, or -> for struct fields"))),
        },
        Expr::Nested(inner) => c(inner, aggs)?,
        Expr::Value(v) => literal(&v.value)?,
        Expr::UnaryOp { op, expr } => {
            let (x, t) = c(expr, aggs)?;
            match op {
                UnaryOperator::Minus if t.is_numeric() => (Scalar::Neg(Box::new(x)), t),
                UnaryOperator::Plus if t.is_numeric() => (x, t),
                UnaryOperator::Not if t.fits(&SqlType::Boolean) => (Scalar::Not(Box::new(x)), t),
                _ => return Err(SqlError::Type(format!("operator {op} cannot apply to '{expr}' of type {t}"))),
            }
        }
        Expr::BinaryOp { left, op, right } => binary(e, left, op, right, scope, aggs)?,
        Expr::IsNull(x) | Expr::IsNotNull(x) => {
            let (x, _) = c(x, aggs)?;
            (Scalar::IsNull(Box::new(x), matches!(e, Expr::IsNotNull(_))), SqlType::Boolean)
        }
        Expr::IsTrue(x) | Expr::IsFalse(x) => {
            let (x, t) = c(x, aggs)?;
            expect(&t, &SqlType::Boolean, e)?;
            let cmp =
                Scalar::Cmp(Cmp::Eq, Box::new(x), Box::new(Scalar::Literal(Value::Bool(matches!(e, Expr::IsTrue(_))))));
            (
                Scalar::Case {
                    whens: vec![(cmp, Scalar::Literal(Value::Bool(true)))],
                    otherwise: Some(Box::new(Scalar::Literal(Value::Bool(false)))),
                },
                SqlType::Boolean,
            )
        }
        Expr::Like { negated, expr, pattern, escape_char: None, any: false } => {
            let (x, t) = c(expr, aggs)?;
            let (p, pt) = c(pattern, aggs)?;
            expect(&t, &SqlType::String, expr)?;
            expect(&pt, &SqlType::String, pattern)?;
            (Scalar::Like { expr: Box::new(x), pattern: Box::new(p), negated: *negated }, SqlType::Boolean)
        }
        Expr::Between { expr, negated, low, high } => {
            let (x, t) = c(expr, aggs)?;
            let (l, lt) = c(low, aggs)?;
            let (h, ht) = c(high, aggs)?;
            comparable(&t, &lt, e)?;
            comparable(&t, &ht, e)?;
            (
                Scalar::Between { expr: Box::new(x), low: Box::new(l), high: Box::new(h), negated: *negated },
                SqlType::Boolean,
            )
        }
        Expr::In { expr, target: sqlparser::ast::InTarget::List(list), negated, .. } => {
            let (x, t) = c(expr, aggs)?;
            let mut items = Vec::with_capacity(list.len());
            for i in list {
                let (s, it) = c(i, aggs)?;
                comparable(&t, &it, e)?;
                items.push(s);
            }
            (Scalar::In { expr: Box::new(x), list: items, negated: *negated }, SqlType::Boolean)
        }
        Expr::Case { operand, conditions, else_result, .. } => {
            let operand = operand.as_ref().map(|o| c(o, aggs)).transpose()?;
            let mut whens = Vec::with_capacity(conditions.len());
            let mut ty: Option<SqlType> = None;
            for w in conditions {
                let (cond, ct) = c(&w.condition, aggs)?;
                let cond = match &operand {
                    Some((o, ot)) => {
                        comparable(ot, &ct, e)?;
                        Scalar::Cmp(Cmp::Eq, Box::new(o.clone()), Box::new(cond))
                    }
                    None => {
                        expect(&ct, &SqlType::Boolean, &w.condition)?;
                        cond
                    }
                };
                let (r, rt) = c(&w.result, aggs)?;
                ty = Some(unify(ty, rt.clone(), e)?);
                whens.push((cond, (r, rt)));
            }
            let otherwise = match else_result {
                Some(x) => {
                    let (r, rt) = c(x, aggs)?;
                    ty = Some(unify(ty, rt.clone(), e)?);
                    Some((r, rt))
                }
                None => None,
            };
            let ty = ty.unwrap_or(SqlType::Null);
            // Branches of a narrower number type take the CASE's type (an INT branch of a
            // DOUBLE CASE gives a DOUBLE).
            let fit = |(r, rt): (Scalar, SqlType)| widen(r, &rt, &ty);
            let whens = whens.into_iter().map(|(c, r)| (c, fit(r))).collect();
            let otherwise = otherwise.map(|o| Box::new(fit(o)));
            (Scalar::Case { whens, otherwise }, ty)
        }
        Expr::Cast { kind: CastKind::Cast | CastKind::DoubleColon, expr, data_type, format: None } => {
            let (x, from) = c(expr, aggs)?;
            let to = cast_type(data_type)?;
            let ok = from == to
                || matches!(to, SqlType::String)
                || (from == SqlType::String && !matches!(to, SqlType::Array(_) | SqlType::Map(_) | SqlType::Struct(_)))
                || (from.is_numeric() && to.is_numeric())
                || matches!(
                    (&from, &to),
                    (SqlType::BigInt, SqlType::Timestamp) | (SqlType::Timestamp, SqlType::BigInt)
                )
                || matches!((&from, &to), (SqlType::Timestamp, SqlType::Date) | (SqlType::Date, SqlType::Timestamp));
            if !ok {
                return Err(SqlError::Type(format!("cannot cast '{expr}' of type {from} to {to}")));
            }
            (Scalar::Cast(Box::new(x), to.clone()), to)
        }
        Expr::Substring { expr, substring_from, substring_for, .. } => {
            let mut args = vec![c(expr, aggs)?];
            if let Some(f) = substring_from {
                args.push(c(f, aggs)?);
            }
            if let Some(f) = substring_for {
                args.push(c(f, aggs)?);
            }
            call(Func::Substring, "SUBSTRING", args)?
        }
        Expr::Trim { expr, trim_where: None, trim_what: None, trim_characters: None } => {
            call(Func::Trim, "TRIM", vec![c(expr, aggs)?])?
        }
        Expr::Ceil { expr, .. } => call(Func::Ceil, "CEIL", vec![c(expr, aggs)?])?,
        Expr::Floor { expr, .. } => call(Func::Floor, "FLOOR", vec![c(expr, aggs)?])?,
        Expr::Array(a) => {
            let mut items = Vec::with_capacity(a.elem.len());
            let mut ty = None;
            for i in &a.elem {
                let (s, t) = c(i, aggs)?;
                ty = Some(unify(ty, t, e)?);
                items.push(s);
            }
            let Some(ty) = ty else {
                return Err(SqlError::Type("an empty ARRAY[] has no type: CAST it".into()));
            };
            (Scalar::Array(items), SqlType::Array(Box::new(ty)))
        }
        Expr::CompoundFieldAccess { root, access_chain } => {
            let (mut x, mut t) = c(root, aggs)?;
            for a in access_chain {
                let sqlparser::ast::AccessExpr::Subscript(Subscript::Index { index }) = a else {
                    return Err(SqlError::Invalid(format!("'{e}': only [index] and ['key'] subscripts are supported")));
                };
                let (i, it) = c(index, aggs)?;
                t = match (&t, &it) {
                    (SqlType::Array(item), SqlType::Int | SqlType::BigInt) => (**item).clone(),
                    (SqlType::Map(item), SqlType::String) => (**item).clone(),
                    _ => return Err(SqlError::Type(format!("'{e}': {t} cannot be subscripted by {it}"))),
                };
                x = Scalar::Subscript(Box::new(x), Box::new(i));
            }
            (x, t)
        }
        // USER, CURRENT_DATE ... parse as calls without parentheses: here they are columns.
        Expr::Function(f) if matches!(f.args, FunctionArguments::None) && f.name.0.len() == 1 => {
            let name = f.name.0[0].to_string();
            column(scope, None, &name.to_uppercase())?
        }
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .iter()
                .map(|p| match p {
                    ObjectNamePart::Identifier(i) => i.value.to_ascii_uppercase(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".");
            let (args, distinct) = match &f.args {
                FunctionArguments::None => (Vec::new(), false),
                FunctionArguments::List(l) => {
                    (l.args.clone(), l.duplicate_treatment.is_some_and(|d| d.to_string() == "DISTINCT"))
                }
                FunctionArguments::Subquery(_) => {
                    return Err(SqlError::Invalid(format!("'{e}': subqueries are not supported")));
                }
            };
            if f.over.is_some() || f.filter.is_some() {
                return Err(SqlError::Invalid(format!("'{e}': OVER and FILTER are not supported")));
            }
            if let Some(agg) = AggFunc::named(&name, distinct) {
                let Some(sink) = aggs.as_mut() else {
                    return Err(SqlError::Invalid(format!(
                        "aggregate function {name} is only allowed in the SELECT and HAVING of a query with GROUP BY"
                    )));
                };
                let mut compiled = Vec::new();
                for a in &args {
                    match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if agg == AggFunc::Count => {}
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => compiled.push(compile(x, scope, &mut None)?),
                        _ => return Err(SqlError::Invalid(format!("'{e}': unsupported argument"))),
                    }
                }
                let ty = agg.check(&name, &compiled)?;
                let call = AggCall { func: agg, args: compiled.into_iter().map(|(s, _)| s).collect(), ty: ty.clone() };
                let i = match sink.iter().position(|a| a.func == call.func && a.args == call.args) {
                    Some(i) => i,
                    None => {
                        sink.push(call);
                        sink.len() - 1
                    }
                };
                return Ok((Scalar::Agg(i), ty));
            }
            let Some(func) = func_named(&name) else {
                return Err(SqlError::NotFound(format!("function {name} does not exist")));
            };
            let mut compiled = Vec::with_capacity(args.len());
            for a in &args {
                match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => compiled.push(c(x, aggs)?),
                    _ => return Err(SqlError::Invalid(format!("'{e}': function arguments are expressions"))),
                }
            }
            call(func, &name, compiled)?
        }
        other => return Err(SqlError::Invalid(format!("expression '{other}' is not supported"))),
    })
}

fn column(scope: &Scope, qualifier: Option<&str>, name: &str) -> Result<(Scalar, SqlType), SqlError> {
    if qualifier.is_none() && (name == "WINDOWSTART" || name == "WINDOWEND") && scope.resolve(None, name).is_err() {
        if !scope.windowed {
            return Err(SqlError::Invalid(format!("{name} is only known in a windowed aggregation")));
        }
        let s = if name == "WINDOWSTART" { Scalar::WindowStart } else { Scalar::WindowEnd };
        return Ok((s, SqlType::BigInt));
    }
    let i = scope.resolve(qualifier, name)?;
    Ok((Scalar::Column(i), scope.columns[i].ty.clone()))
}

fn literal(v: &SqlValue) -> Result<(Scalar, SqlType), SqlError> {
    Ok(match v {
        SqlValue::Number(n, _) => {
            if let Ok(i) = n.parse::<i32>() {
                (Scalar::Literal(Value::Int(i)), SqlType::Int)
            } else if let Ok(i) = n.parse::<i64>() {
                (Scalar::Literal(Value::BigInt(i)), SqlType::BigInt)
            } else {
                let d: f64 = n.parse().map_err(|_| SqlError::Invalid(format!("'{n}' is not a number")))?;
                (Scalar::Literal(Value::Double(d)), SqlType::Double)
            }
        }
        SqlValue::SingleQuotedString(s) => (Scalar::Literal(Value::str(s)), SqlType::String),
        SqlValue::Boolean(b) => (Scalar::Literal(Value::Bool(*b)), SqlType::Boolean),
        SqlValue::Null => (Scalar::Literal(Value::Null), SqlType::Null),
        other => return Err(SqlError::Invalid(format!("literal {other} is not supported"))),
    })
}

fn cast_type(t: &DataType) -> Result<SqlType, SqlError> {
    Ok(match t {
        DataType::Boolean | DataType::Bool => SqlType::Boolean,
        DataType::Int(_) | DataType::Integer(_) => SqlType::Int,
        DataType::BigInt(_) => SqlType::BigInt,
        DataType::Double(_) | DataType::DoublePrecision | DataType::Float(_) => SqlType::Double,
        DataType::String(_) | DataType::Varchar(_) | DataType::Text => SqlType::String,
        DataType::Bytes(_) => SqlType::Bytes,
        DataType::Timestamp(_, _) => SqlType::Timestamp,
        DataType::Date => SqlType::Date,
        other => return Err(SqlError::Type(format!("cannot cast to {other}"))),
    })
}

fn expect(t: &SqlType, want: &SqlType, e: &Expr) -> Result<(), SqlError> {
    if t.fits(want) { Ok(()) } else { Err(SqlError::Type(format!("'{e}' is {t}, where {want} is expected"))) }
}

fn comparable(a: &SqlType, b: &SqlType, e: &Expr) -> Result<(), SqlError> {
    let ok = a.fits(b)
        || b.fits(a)
        || (a.is_numeric() && b.is_numeric())
        || matches!((a, b), (SqlType::Timestamp, SqlType::String) | (SqlType::String, SqlType::Timestamp))
        || matches!((a, b), (SqlType::Timestamp, SqlType::BigInt) | (SqlType::BigInt, SqlType::Timestamp));
    if ok { Ok(()) } else { Err(SqlError::Type(format!("cannot compare {a} with {b} in '{e}'"))) }
}

/// The common type of two branches (numbers widen).
fn unify(current: Option<SqlType>, t: SqlType, e: &Expr) -> Result<SqlType, SqlError> {
    let Some(c) = current else { return Ok(t) };
    if t.fits(&c) {
        return Ok(c);
    }
    if c == SqlType::Null {
        return Ok(t);
    }
    if c.is_numeric() && t.is_numeric() {
        return Ok(wider(&c, &t));
    }
    Err(SqlError::Type(format!("the branches of '{e}' have types {c} and {t}")))
}

/// `s` (of type `from`) made of type `to` when both are numbers and they differ.
fn widen(s: Scalar, from: &SqlType, to: &SqlType) -> Scalar {
    if from != to && from.is_numeric() && to.is_numeric() && *from != SqlType::Null && *to != SqlType::Null {
        Scalar::Cast(Box::new(s), to.clone())
    } else {
        s
    }
}

/// The wider of two numeric types (NULL takes the other).
pub fn wider(a: &SqlType, b: &SqlType) -> SqlType {
    match (a, b) {
        (SqlType::Null, t) | (t, SqlType::Null) => t.clone(),
        (SqlType::Double, _) | (_, SqlType::Double) => SqlType::Double,
        (SqlType::BigInt, _) | (_, SqlType::BigInt) => SqlType::BigInt,
        _ => SqlType::Int,
    }
}

fn binary(
    e: &Expr,
    left: &Expr,
    op: &BinaryOperator,
    right: &Expr,
    scope: &Scope,
    aggs: &mut AggSink<'_>,
) -> Result<(Scalar, SqlType), SqlError> {
    if let BinaryOperator::Arrow = op {
        // `struct->field`: the right side names a field.
        let (x, t) = compile(left, scope, aggs)?;
        let field = match right {
            Expr::Identifier(i) => ident(i),
            other => return Err(SqlError::Invalid(format!("'{e}': a field name follows ->, not '{other}'"))),
        };
        let SqlType::Struct(fields) = &t else {
            return Err(SqlError::Type(format!("'{left}' is {t}, not a STRUCT: -> reads struct fields")));
        };
        let Some((name, ft)) = fields.iter().find(|(n, _)| *n == field || n.eq_ignore_ascii_case(&field)) else {
            return Err(SqlError::NotFound(format!("'{left}' has no field {field}")));
        };
        return Ok((Scalar::Field(Box::new(x), name.clone()), ft.clone()));
    }
    let (l, lt) = compile(left, scope, aggs)?;
    let (r, rt) = compile(right, scope, aggs)?;
    let (l, r) = (Box::new(l), Box::new(r));
    let arith = |a: Arith| -> Result<(Scalar, SqlType), SqlError> {
        if lt.is_numeric() && rt.is_numeric() {
            Ok((Scalar::Arith(a, l.clone(), r.clone()), wider(&lt, &rt)))
        } else if a == Arith::Add && lt.fits(&SqlType::String) && rt.fits(&SqlType::String) {
            Ok((Scalar::Concat(l.clone(), r.clone()), SqlType::String))
        } else {
            Err(SqlError::Type(format!("operator {op} cannot apply to {lt} and {rt} in '{e}'")))
        }
    };
    let cmp = |c: Cmp| -> Result<(Scalar, SqlType), SqlError> {
        comparable(&lt, &rt, e)?;
        Ok((Scalar::Cmp(c, l.clone(), r.clone()), SqlType::Boolean))
    };
    match op {
        BinaryOperator::Plus => arith(Arith::Add),
        BinaryOperator::Minus => arith(Arith::Sub),
        BinaryOperator::Multiply => arith(Arith::Mul),
        BinaryOperator::Divide => arith(Arith::Div),
        BinaryOperator::Modulo => arith(Arith::Mod),
        BinaryOperator::StringConcat => {
            expect(&lt, &SqlType::String, left)?;
            expect(&rt, &SqlType::String, right)?;
            Ok((Scalar::Concat(l, r), SqlType::String))
        }
        BinaryOperator::Eq => cmp(Cmp::Eq),
        BinaryOperator::NotEq => cmp(Cmp::Ne),
        BinaryOperator::Lt => cmp(Cmp::Lt),
        BinaryOperator::LtEq => cmp(Cmp::Le),
        BinaryOperator::Gt => cmp(Cmp::Gt),
        BinaryOperator::GtEq => cmp(Cmp::Ge),
        BinaryOperator::And | BinaryOperator::Or => {
            expect(&lt, &SqlType::Boolean, left)?;
            expect(&rt, &SqlType::Boolean, right)?;
            let s = if *op == BinaryOperator::And { Scalar::And(l, r) } else { Scalar::Or(l, r) };
            Ok((s, SqlType::Boolean))
        }
        other => Err(SqlError::Invalid(format!("operator {other} is not supported"))),
    }
}

/// Checks a call's arguments and gives its result type.
fn call(f: Func, name: &str, args: Vec<(Scalar, SqlType)>) -> Result<(Scalar, SqlType), SqlError> {
    use Func::*;
    use SqlType as T;
    let types: Vec<&T> = args.iter().map(|(_, t)| t).collect();
    let bad = || {
        let list: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        SqlError::Type(format!("function {name} does not take ({})", list.join(", ")))
    };
    let is = |i: usize, t: &T| types.get(i).is_some_and(|x| x.fits(t));
    let num = |i: usize| types.get(i).is_some_and(|x| x.is_numeric());
    let int = |i: usize| types.get(i).is_some_and(|x| matches!(x, T::Int | T::BigInt));
    let n = types.len();
    let int = |i: usize| int(i) || types.get(i).is_some_and(|x| **x == T::Null);
    let ty = match f {
        Lcase | Ucase | Trim | Ltrim | Rtrim | Initcap if n == 1 && is(0, &T::String) => T::String,
        Len if n == 1 && is(0, &T::String) => T::Int,
        Substring if (n == 2 || n == 3) && is(0, &T::String) && int(1) && (n == 2 || int(2)) => T::String,
        Replace if n == 3 && (0..3).all(|i| is(i, &T::String)) => T::String,
        Instr if n == 2 && is(0, &T::String) && is(1, &T::String) => T::Int,
        Concat if n >= 1 && (0..n).all(|i| is(i, &T::String)) => T::String,
        ConcatWs if n >= 2 && (0..n).all(|i| is(i, &T::String)) => T::String,
        Split if n == 2 && is(0, &T::String) && is(1, &T::String) => T::Array(Box::new(T::String)),
        Lpad | Rpad if n == 3 && is(0, &T::String) && int(1) && is(2, &T::String) => T::String,
        Abs | Ceil | Floor if n == 1 && num(0) => types[0].clone(),
        Round if n == 1 && num(0) => {
            if is(0, &T::Double) {
                T::BigInt
            } else {
                types[0].clone()
            }
        }
        Round if n == 2 && num(0) && int(1) => T::Double,
        Sqrt | Exp | Ln if n == 1 && num(0) => T::Double,
        Power if n == 2 && num(0) && num(1) => T::Double,
        Sign if n == 1 && num(0) => T::Int,
        Coalesce if n >= 1 => {
            let mut t: Option<T> = None;
            for x in &types {
                t = Some(match t {
                    None => (*x).clone(),
                    Some(c) if x.fits(&c) => c,
                    Some(T::Null) => (*x).clone(),
                    Some(c) if c.is_numeric() && x.is_numeric() => wider(&c, x),
                    Some(_) => return Err(bad()),
                });
            }
            t.unwrap_or(T::Null)
        }
        Ifnull if n == 2 && (types[1].fits(types[0]) || types[0].fits(types[1]) || (num(0) && num(1))) => {
            match (types[0], types[1]) {
                (T::Null, t) => t.clone(),
                (a, b) if a.is_numeric() && b.is_numeric() => wider(a, b),
                (a, _) => a.clone(),
            }
        }
        // NULLIF gives its first argument or NULL: of the first argument's type.
        Nullif if n == 2 && (types[1].fits(types[0]) || types[0].fits(types[1]) || (num(0) && num(1))) => {
            if *types[0] == T::Null { types[1].clone() } else { types[0].clone() }
        }
        UnixTimestamp if n == 0 || (n == 1 && is(0, &T::Timestamp)) => T::BigInt,
        UnixDate if n == 0 || (n == 1 && is(0, &T::Date)) => T::Int,
        TimestampToString if (n == 2 || n == 3) && int(0) && is(1, &T::String) && (n == 2 || is(2, &T::String)) => {
            T::String
        }
        StringToTimestamp if (n == 2 || n == 3) && (0..n).all(|i| is(i, &T::String)) => T::BigInt,
        FormatTimestamp
            if (n == 2 || n == 3) && is(0, &T::Timestamp) && is(1, &T::String) && (n == 2 || is(2, &T::String)) =>
        {
            T::String
        }
        ParseTimestamp if (n == 2 || n == 3) && (0..n).all(|i| is(i, &T::String)) => T::Timestamp,
        FromUnixtime if n == 1 && int(0) => T::Timestamp,
        FormatDate if n == 2 && is(0, &T::Date) && is(1, &T::String) => T::String,
        ParseDate if n == 2 && is(0, &T::String) && is(1, &T::String) => T::Date,
        DateToString if n == 2 && int(0) && is(1, &T::String) => T::String,
        StringToDate if n == 2 && is(0, &T::String) && is(1, &T::String) => T::Int,
        ExtractJsonField if n == 2 && is(0, &T::String) && is(1, &T::String) => T::String,
        ArrayLength if n == 1 && matches!(types[0], T::Array(_)) => T::Int,
        ArrayContains
            if n == 2
                && matches!(types[0], T::Array(item) if **item == *types[1] || (item.is_numeric() && types[1].is_numeric())) =>
        {
            T::Boolean
        }
        _ => return Err(bad()),
    };
    // COALESCE and IFNULL give one of their arguments: of the call's type.
    let args = match f {
        Coalesce | Ifnull => args.into_iter().map(|(s, t)| widen(s, &t, &ty)).collect(),
        _ => args.into_iter().map(|(s, _)| s).collect(),
    };
    Ok((Scalar::Call(f, args), ty))
}

/// What evaluation sees besides the row: the window of an aggregated row.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalCtx {
    pub window: Option<(i64, i64)>,
}

impl Scalar {
    /// The columns this expression reads.
    pub fn columns(&self, out: &mut Vec<usize>) {
        self.visit(&mut |s| {
            if let Scalar::Column(i) = s {
                out.push(*i);
            }
        });
    }

    fn visit(&self, f: &mut impl FnMut(&Scalar)) {
        f(self);
        match self {
            Scalar::Neg(x) | Scalar::Not(x) | Scalar::IsNull(x, _) | Scalar::Cast(x, _) | Scalar::Field(x, _) => {
                x.visit(f)
            }
            Scalar::Arith(_, a, b)
            | Scalar::Concat(a, b)
            | Scalar::Cmp(_, a, b)
            | Scalar::And(a, b)
            | Scalar::Or(a, b)
            | Scalar::Subscript(a, b)
            | Scalar::Like { expr: a, pattern: b, .. } => {
                a.visit(f);
                b.visit(f)
            }
            Scalar::Between { expr, low, high, .. } => {
                expr.visit(f);
                low.visit(f);
                high.visit(f)
            }
            Scalar::In { expr, list, .. } => {
                expr.visit(f);
                list.iter().for_each(|x| x.visit(f))
            }
            Scalar::Case { whens, otherwise } => {
                for (c, r) in whens {
                    c.visit(f);
                    r.visit(f);
                }
                if let Some(o) = otherwise {
                    o.visit(f)
                }
            }
            Scalar::Call(_, args) | Scalar::Array(args) => args.iter().for_each(|x| x.visit(f)),
            Scalar::Column(_) | Scalar::Literal(_) | Scalar::Agg(_) | Scalar::WindowStart | Scalar::WindowEnd => {}
        }
    }

    /// The expression with every subtree for which `f` gives a replacement replaced.
    pub fn rewrite(&self, f: &impl Fn(&Scalar) -> Option<Scalar>) -> Scalar {
        if let Some(r) = f(self) {
            return r;
        }
        let b = |x: &Scalar| Box::new(x.rewrite(f));
        match self {
            Scalar::Neg(x) => Scalar::Neg(b(x)),
            Scalar::Not(x) => Scalar::Not(b(x)),
            Scalar::IsNull(x, n) => Scalar::IsNull(b(x), *n),
            Scalar::Cast(x, t) => Scalar::Cast(b(x), t.clone()),
            Scalar::Field(x, n) => Scalar::Field(b(x), n.clone()),
            Scalar::Arith(o, x, y) => Scalar::Arith(*o, b(x), b(y)),
            Scalar::Concat(x, y) => Scalar::Concat(b(x), b(y)),
            Scalar::Cmp(o, x, y) => Scalar::Cmp(*o, b(x), b(y)),
            Scalar::And(x, y) => Scalar::And(b(x), b(y)),
            Scalar::Or(x, y) => Scalar::Or(b(x), b(y)),
            Scalar::Subscript(x, y) => Scalar::Subscript(b(x), b(y)),
            Scalar::Like { expr, pattern, negated } => {
                Scalar::Like { expr: b(expr), pattern: b(pattern), negated: *negated }
            }
            Scalar::Between { expr, low, high, negated } => {
                Scalar::Between { expr: b(expr), low: b(low), high: b(high), negated: *negated }
            }
            Scalar::In { expr, list, negated } => {
                Scalar::In { expr: b(expr), list: list.iter().map(|x| x.rewrite(f)).collect(), negated: *negated }
            }
            Scalar::Case { whens, otherwise } => Scalar::Case {
                whens: whens.iter().map(|(c, r)| (c.rewrite(f), r.rewrite(f))).collect(),
                otherwise: otherwise.as_ref().map(|o| b(o)),
            },
            Scalar::Call(func, args) => Scalar::Call(*func, args.iter().map(|x| x.rewrite(f)).collect()),
            Scalar::Array(args) => Scalar::Array(args.iter().map(|x| x.rewrite(f)).collect()),
            other => other.clone(),
        }
    }

    /// The value on `row`. Runtime problems (a bad date, a division by zero) give NULL, as
    /// ksqlDB's functions do, rather than failing the query.
    pub fn eval(&self, row: &[Value], cx: &EvalCtx) -> Value {
        let ev = |x: &Scalar| x.eval(row, cx);
        match self {
            Scalar::Column(i) => row.get(*i).cloned().unwrap_or(Value::Null),
            Scalar::Literal(v) => v.clone(),
            Scalar::Neg(x) => match ev(x) {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::BigInt(i) => Value::BigInt(i.wrapping_neg()),
                Value::Double(d) => Value::Double(-d),
                _ => Value::Null,
            },
            Scalar::Arith(op, a, b) => arith(*op, &ev(a), &ev(b)),
            Scalar::Concat(a, b) => match (ev(a), ev(b)) {
                (Value::String(a), Value::String(b)) => Value::str(&format!("{a}{b}")),
                _ => Value::Null,
            },
            Scalar::Cmp(op, a, b) => {
                let (a, b) = (ev(a), ev(b));
                match compare(&a, &b) {
                    None => Value::Null,
                    Some(o) => Value::Bool(match op {
                        Cmp::Eq => o.is_eq(),
                        Cmp::Ne => o.is_ne(),
                        Cmp::Lt => o.is_lt(),
                        Cmp::Le => o.is_le(),
                        Cmp::Gt => o.is_gt(),
                        Cmp::Ge => o.is_ge(),
                    }),
                }
            }
            Scalar::And(a, b) => match (ev(a), ev(b)) {
                (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
                (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
                _ => Value::Null,
            },
            Scalar::Or(a, b) => match (ev(a), ev(b)) {
                (Value::Bool(true), _) | (_, Value::Bool(true)) => Value::Bool(true),
                (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
                _ => Value::Null,
            },
            Scalar::Not(x) => match ev(x) {
                Value::Bool(b) => Value::Bool(!b),
                _ => Value::Null,
            },
            Scalar::IsNull(x, negated) => Value::Bool(ev(x).is_null() != *negated),
            Scalar::Like { expr, pattern, negated } => match (ev(expr), ev(pattern)) {
                (Value::String(s), Value::String(p)) => Value::Bool(like(&s, &p) != *negated),
                _ => Value::Null,
            },
            Scalar::Between { expr, low, high, negated } => {
                let x = ev(expr);
                match (compare(&x, &ev(low)), compare(&x, &ev(high))) {
                    (Some(l), Some(h)) => Value::Bool((l.is_ge() && h.is_le()) != *negated),
                    _ => Value::Null,
                }
            }
            Scalar::In { expr, list, negated } => {
                let x = ev(expr);
                if x.is_null() {
                    return Value::Null;
                }
                let items: Vec<Value> = list.iter().map(ev).collect();
                let found = items.iter().any(|i| compare(&x, i).is_some_and(|o| o.is_eq()));
                // Not found among a list holding NULL: unknown, as in SQL.
                if !found && items.iter().any(Value::is_null) {
                    return Value::Null;
                }
                Value::Bool(found != *negated)
            }
            Scalar::Case { whens, otherwise } => {
                for (c, r) in whens {
                    if ev(c) == Value::Bool(true) {
                        return ev(r);
                    }
                }
                otherwise.as_ref().map_or(Value::Null, |o| ev(o))
            }
            Scalar::Cast(x, t) => cast(ev(x), t),
            Scalar::Call(f, args) => {
                let vals: Vec<Value> = args.iter().map(ev).collect();
                call_fn(*f, &vals).unwrap_or(Value::Null)
            }
            Scalar::Field(x, name) => match ev(x) {
                Value::Struct(fields) => fields.iter().find(|(n, _)| n == name).map_or(Value::Null, |(_, v)| v.clone()),
                _ => Value::Null,
            },
            Scalar::Subscript(x, i) => match (ev(x), ev(i)) {
                (Value::Array(items), i) => {
                    let Some(i) = i.as_i64() else { return Value::Null };
                    let idx = if i > 0 { i - 1 } else { items.len() as i64 + i };
                    usize::try_from(idx).ok().and_then(|i| items.get(i).cloned()).unwrap_or(Value::Null)
                }
                (Value::Map(entries), Value::String(k)) => {
                    entries.iter().find(|(n, _)| **n == *k).map_or(Value::Null, |(_, v)| v.clone())
                }
                _ => Value::Null,
            },
            Scalar::Array(items) => Value::Array(Arc::new(items.iter().map(ev).collect())),
            Scalar::WindowStart => cx.window.map_or(Value::Null, |w| Value::BigInt(w.0)),
            Scalar::WindowEnd => cx.window.map_or(Value::Null, |w| Value::BigInt(w.1)),
            Scalar::Agg(_) => Value::Null,
        }
    }
}

/// Comparison with strings read as timestamps where the other side is one.
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Timestamp(_), Value::String(s)) => a.compare(&cast(Value::String(s.clone()), &SqlType::Timestamp)),
        (Value::String(s), Value::Timestamp(_)) => cast(Value::String(s.clone()), &SqlType::Timestamp).compare(b),
        (Value::Timestamp(t), Value::BigInt(_) | Value::Int(_)) => Value::BigInt(*t).compare(b),
        (Value::BigInt(_) | Value::Int(_), Value::Timestamp(t)) => a.compare(&Value::BigInt(*t)),
        _ => a.compare(b),
    }
}

fn arith(op: Arith, a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => Value::Null,
        (Value::Double(_), _) | (_, Value::Double(_)) => {
            let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else { return Value::Null };
            Value::Double(match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                Arith::Div => x / y,
                Arith::Mod => x % y,
            })
        }
        _ => {
            let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) else { return Value::Null };
            let r = match op {
                Arith::Add => x.checked_add(y),
                Arith::Sub => x.checked_sub(y),
                Arith::Mul => x.checked_mul(y),
                Arith::Div => x.checked_div(y),
                Arith::Mod => x.checked_rem(y),
            };
            match (r, a, b) {
                (None, _, _) => Value::Null,
                (Some(r), Value::Int(_), Value::Int(_)) => i32::try_from(r).map_or(Value::Null, Value::Int),
                (Some(r), _, _) => Value::BigInt(r),
            }
        }
    }
}

/// SQL LIKE: `%` any run, `_` one character.
fn like(s: &str, p: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = p.chars().collect();
    let (mut si, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

/// A value converted to type `t` (NULL when it cannot be).
pub fn cast(v: Value, t: &SqlType) -> Value {
    if v.is_null() {
        return v;
    }
    match (t, &v) {
        (SqlType::String, Value::String(_)) => v,
        (SqlType::String, _) => Value::str(&v.to_string()),
        (_, Value::String(s)) => parse_text(s, t).unwrap_or(Value::Null),
        (SqlType::Int, _) => match &v {
            Value::Double(d) => Value::Int(*d as i32),
            other => other.as_i64().and_then(|i| i32::try_from(i).ok()).map_or(Value::Null, Value::Int),
        },
        (SqlType::BigInt, _) => match &v {
            Value::Double(d) => Value::BigInt(*d as i64),
            other => other.as_i64().map_or(Value::Null, Value::BigInt),
        },
        (SqlType::Double, _) => v.as_f64().map_or(Value::Null, Value::Double),
        (SqlType::Timestamp, Value::Date(d)) => Value::Timestamp(*d as i64 * 86_400_000),
        (SqlType::Timestamp, _) => v.as_i64().map_or(Value::Null, Value::Timestamp),
        (SqlType::Date, Value::Timestamp(ms)) => Value::Date(ms.div_euclid(86_400_000) as i32),
        _ if value_has_type(&v, t) => v,
        _ => Value::Null,
    }
}

/// Whether `v` is (or is null for) type `t`.
pub fn value_has_type(v: &Value, t: &SqlType) -> bool {
    matches!(
        (v, t),
        (Value::Null, _)
            | (Value::Bool(_), SqlType::Boolean)
            | (Value::Int(_), SqlType::Int)
            | (Value::BigInt(_), SqlType::BigInt)
            | (Value::Double(_), SqlType::Double)
            | (Value::String(_), SqlType::String)
            | (Value::Bytes(_), SqlType::Bytes)
            | (Value::Timestamp(_), SqlType::Timestamp)
            | (Value::Date(_), SqlType::Date)
            | (Value::Array(_), SqlType::Array(_))
            | (Value::Map(_), SqlType::Map(_))
            | (Value::Struct(_), SqlType::Struct(_))
    )
}

/// LPAD and RPAD build strings of at most this many characters (NULL beyond).
const MAX_PAD: usize = 1 << 20;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn utc_only(tz: Option<&Value>) -> Option<()> {
    match tz {
        None => Some(()),
        Some(Value::String(z)) if matches!(&**z, "UTC" | "Z" | "GMT" | "Etc/UTC" | "+00:00") => Some(()),
        _ => None,
    }
}

fn call_fn(f: Func, a: &[Value]) -> Option<Value> {
    use Func::*;
    let s = |i: usize| a.get(i).and_then(|v| v.as_str());
    let i = |i: usize| a.get(i).and_then(|v| v.as_i64());
    let d = |i: usize| a.get(i).and_then(|v| v.as_f64());
    let string = |x: String| Some(Value::str(&x));
    match f {
        Coalesce => return Some(a.iter().find(|v| !v.is_null()).cloned().unwrap_or(Value::Null)),
        Ifnull => return Some(if a[0].is_null() { a[1].clone() } else { a[0].clone() }),
        Nullif => {
            return Some(if compare(&a[0], &a[1]).is_some_and(|o| o.is_eq()) { Value::Null } else { a[0].clone() });
        }
        Concat => {
            // ksqlDB's CONCAT skips nulls.
            return string(a.iter().filter_map(|v| v.as_str()).collect());
        }
        ConcatWs => {
            let sep = s(0)?;
            let parts: Vec<&str> = a[1..].iter().filter_map(|v| v.as_str()).collect();
            return string(parts.join(sep));
        }
        UnixTimestamp if a.is_empty() => return Some(Value::BigInt(now_ms())),
        UnixDate if a.is_empty() => return Some(Value::Int(now_ms().div_euclid(86_400_000) as i32)),
        _ => {}
    }
    if a.iter().any(|v| v.is_null()) {
        return Some(Value::Null);
    }
    Some(match f {
        Lcase => Value::str(&s(0)?.to_lowercase()),
        Ucase => Value::str(&s(0)?.to_uppercase()),
        Len => Value::Int(s(0)?.chars().count() as i32),
        Trim => Value::str(s(0)?.trim()),
        Ltrim => Value::str(s(0)?.trim_start()),
        Rtrim => Value::str(s(0)?.trim_end()),
        Initcap => {
            let mut out = String::new();
            let mut start = true;
            for c in s(0)?.chars() {
                if start {
                    out.extend(c.to_uppercase())
                } else {
                    out.extend(c.to_lowercase())
                }
                start = c.is_whitespace();
            }
            Value::str(&out)
        }
        Substring => {
            let chars: Vec<char> = s(0)?.chars().collect();
            let len = chars.len() as i64;
            let pos = i(1)?;
            // 1-based; negative counts from the end.
            let start = if pos > 0 {
                pos - 1
            } else if pos < 0 {
                len.saturating_add(pos).max(0)
            } else {
                0
            };
            let end = match a.get(2) {
                Some(n) => start.saturating_add(n.as_i64()?.max(0)).min(len),
                None => len,
            };
            if start >= len || start >= end {
                Value::str("")
            } else {
                Value::str(&chars[start as usize..end as usize].iter().collect::<String>())
            }
        }
        Replace => Value::str(&s(0)?.replace(s(1)?, s(2)?)),
        Instr => {
            let (h, n) = (s(0)?, s(1)?);
            Value::Int(h.find(n).map_or(0, |b| h[..b].chars().count() as i32 + 1))
        }
        Split => {
            let (x, sep) = (s(0)?, s(1)?);
            let parts: Vec<Value> = if sep.is_empty() {
                x.chars().map(|c| Value::str(&c.to_string())).collect()
            } else {
                x.split(sep).map(Value::str).collect()
            };
            Value::Array(Arc::new(parts))
        }
        Lpad | Rpad => {
            let (x, n, pad) = (s(0)?, usize::try_from(i(1)?).ok()?, s(2)?);
            if n > MAX_PAD {
                return None;
            }
            let chars: Vec<char> = x.chars().collect();
            if chars.len() >= n {
                Value::str(&chars[..n].iter().collect::<String>())
            } else if pad.is_empty() {
                Value::Null
            } else {
                let fill: String = pad.chars().cycle().take(n - chars.len()).collect();
                Value::str(&if f == Lpad { format!("{fill}{x}") } else { format!("{x}{fill}") })
            }
        }
        Abs => match &a[0] {
            Value::Int(x) => Value::Int(x.checked_abs()?),
            Value::BigInt(x) => Value::BigInt(x.checked_abs()?),
            _ => Value::Double(d(0)?.abs()),
        },
        Ceil | Floor => match &a[0] {
            Value::Double(x) => Value::Double(if f == Ceil { x.ceil() } else { x.floor() }),
            other => other.clone(),
        },
        Round => match (&a[0], a.get(1)) {
            (Value::Double(x), None) => Value::BigInt(x.round() as i64),
            (_, None) => a[0].clone(),
            (_, Some(places)) => {
                let p = 10f64.powi(places.as_i64()? as i32);
                Value::Double((d(0)? * p).round() / p)
            }
        },
        Sqrt => Value::Double(d(0)?.sqrt()),
        Exp => Value::Double(d(0)?.exp()),
        Ln => Value::Double(d(0)?.ln()),
        Power => Value::Double(d(0)?.powf(d(1)?)),
        Sign => Value::Int(d(0)?.signum() as i32 * (d(0)? != 0.0) as i32),
        UnixTimestamp => Value::BigInt(i(0)?),
        UnixDate => Value::Int(i(0)? as i32),
        TimestampToString | FormatTimestamp => {
            utc_only(a.get(2))?;
            Value::str(&crate::time::format(i(0)?, s(1)?).ok()?)
        }
        StringToTimestamp => {
            utc_only(a.get(2))?;
            Value::BigInt(crate::time::parse(s(0)?, s(1)?).ok()?)
        }
        ParseTimestamp => {
            utc_only(a.get(2))?;
            Value::Timestamp(crate::time::parse(s(0)?, s(1)?).ok()?)
        }
        FromUnixtime => Value::Timestamp(i(0)?),
        FormatDate | DateToString => Value::str(&crate::time::format(i(0)? * 86_400_000, s(1)?).ok()?),
        ParseDate => Value::Date((crate::time::parse(s(0)?, s(1)?).ok()? / 86_400_000) as i32),
        StringToDate => Value::Int((crate::time::parse(s(0)?, s(1)?).ok()? / 86_400_000) as i32),
        ExtractJsonField => {
            let json: serde_json::Value = serde_json::from_str(s(0)?).ok()?;
            let path = s(1)?.strip_prefix('$')?;
            let mut at = &json;
            for step in path.split('.').filter(|p| !p.is_empty()) {
                let (name, idx) = match step.find('[') {
                    Some(b) => (&step[..b], step[b + 1..].strip_suffix(']').and_then(|i| i.parse::<usize>().ok())),
                    None => (step, None),
                };
                if !name.is_empty() {
                    at = at.get(name)?;
                }
                if let Some(i) = idx {
                    at = at.get(i)?;
                }
            }
            match at {
                serde_json::Value::Null => Value::Null,
                serde_json::Value::String(s) => Value::str(s),
                other => Value::str(&other.to_string()),
            }
        }
        ArrayLength => match &a[0] {
            Value::Array(items) => Value::Int(items.len() as i32),
            _ => return None,
        },
        ArrayContains => match &a[0] {
            Value::Array(items) => Value::Bool(items.iter().any(|x| compare(x, &a[1]).is_some_and(|o| o.is_eq()))),
            _ => return None,
        },
        Coalesce | Ifnull | Nullif | Concat | ConcatWs => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        let col = |n: &str, ty: SqlType| ScopeColumn { qualifier: Some("S".into()), name: n.into(), ty, hidden: false };
        Scope {
            columns: vec![
                col("A", SqlType::Int),
                col("B", SqlType::String),
                col("C", SqlType::Double),
                col("S", SqlType::Struct(vec![("X".into(), SqlType::BigInt)])),
                col("M", SqlType::Map(Box::new(SqlType::Int))),
            ],
            windowed: false,
        }
    }

    fn eval(sql: &str, row: &[Value]) -> Result<Value, SqlError> {
        let e = crate::parser::parse_expr(sql)?;
        let (s, _) = compile(&e, &scope(), &mut None)?;
        Ok(s.eval(row, &EvalCtx::default()))
    }

    #[test]
    fn expressions_evaluate_with_sql_semantics() {
        let row = [
            Value::Int(7),
            Value::str("Hello World"),
            Value::Double(2.5),
            Value::Struct(Arc::new(vec![("X".into(), Value::BigInt(9))])),
            Value::Map(Arc::new(vec![("k".into(), Value::Int(3))])),
        ];
        let cases: &[(&str, Value)] = &[
            ("a * 2 + 1", Value::Int(15)),
            ("a / 2", Value::Int(3)),
            ("a / 0", Value::Null),
            ("a + c", Value::Double(9.5)),
            ("b LIKE 'Hell_ %d'", Value::Bool(true)),
            ("b NOT LIKE '%x%'", Value::Bool(true)),
            ("CASE WHEN a > 5 THEN 'big' ELSE 'small' END", Value::str("big")),
            ("CASE a WHEN 1 THEN 'one' WHEN 7 THEN 'seven' END", Value::str("seven")),
            ("CAST(a AS STRING) + '!'", Value::str("7!")),
            ("CAST('12' AS BIGINT)", Value::BigInt(12)),
            ("CAST('x' AS INT)", Value::Null),
            ("UCASE(SUBSTRING(b, 7))", Value::str("WORLD")),
            ("SUBSTRING(b, 1, 5)", Value::str("Hello")),
            ("LEN(b)", Value::Int(11)),
            ("s->x", Value::BigInt(9)),
            ("m['k']", Value::Int(3)),
            ("SPLIT(b, ' ')[2]", Value::str("World")),
            ("SPLIT(b, ' ')[-1]", Value::str("World")),
            ("a IN (1, 7)", Value::Bool(true)),
            ("a BETWEEN 1 AND 6", Value::Bool(false)),
            ("NULL IS NULL AND a IS NOT NULL", Value::Bool(true)),
            ("NULL AND FALSE", Value::Bool(false)),
            ("COALESCE(NULL, b)", Value::str("Hello World")),
            ("ROUND(c)", Value::BigInt(3)),
            ("TIMESTAMPTOSTRING(86400000, 'yyyy-MM-dd')", Value::str("1970-01-02")),
            ("STRINGTOTIMESTAMP('1970-01-02', 'yyyy-MM-dd')", Value::BigInt(86_400_000)),
            ("EXTRACTJSONFIELD('{\"a\": {\"b\": [1, \"x\"]}}', '$.a.b[1]')", Value::str("x")),
            ("LPAD('7', 3, '0')", Value::str("007")),
            ("b || '!'", Value::str("Hello World!")),
        ];
        for (sql, want) in cases {
            assert_eq!(&eval(sql, &row).unwrap(), want, "{sql}");
        }
    }

    #[test]
    fn type_errors_name_the_expression_and_the_types() {
        let e = eval("a + b", &[]).unwrap_err().to_string();
        assert_eq!(e, "operator + cannot apply to INTEGER and STRING in 'a + b'");
        let e = eval("b > 1", &[]).unwrap_err().to_string();
        assert_eq!(e, "cannot compare STRING with INTEGER in 'b > 1'");
        assert!(eval("nope", &[]).unwrap_err().to_string().contains("column 'NOPE' cannot be resolved"));
        assert!(eval("UCASE(a)", &[]).unwrap_err().to_string().contains("function UCASE does not take (INTEGER)"));
        assert!(eval("COUNT(a)", &[]).unwrap_err().to_string().contains("only allowed"));
        assert!(eval("a->x", &[]).unwrap_err().to_string().contains("not a STRUCT"));
        assert!(eval("NOSUCH(a)", &[]).unwrap_err().to_string().contains("function NOSUCH does not exist"));
    }
}
