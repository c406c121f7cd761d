//! Closed sets of named values (backends, label modes, stages…): each enum lists its values
//! once, with the spelling flags and YAML files share and a one-line description, so the
//! command line (`crate::cli`) can offer and check them without the enum knowing about it.

/// An enum of unit variants whose values have names.
pub trait Choice: Sized + Copy + PartialEq + 'static {
    /// Every value: its name (as serde spells it) and a one-line description.
    const CHOICES: &'static [(&'static str, Self, &'static str)];

    /// The value called `name`.
    fn from_name(name: &str) -> Option<Self> {
        Self::CHOICES
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, v, _)| *v)
    }

    /// The name of `self`.
    fn name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|(_, v, _)| *v == self)
            .map(|(n, ..)| *n)
            .expect("every value is listed in CHOICES")
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::Choice;

    /// Every listed name is the value's serde spelling, so a flag and a YAML key agree.
    fn names_are_serde_names<T: Choice + Serialize + DeserializeOwned + std::fmt::Debug>() {
        for (name, value, help) in T::CHOICES {
            assert_eq!(serde_yaml::to_string(value).unwrap().trim(), *name);
            assert_eq!(serde_yaml::from_str::<T>(name).unwrap(), *value);
            assert_eq!(T::from_name(name), Some(*value));
            assert!(!help.is_empty(), "{name}");
        }
        assert_eq!(T::from_name("no-such-value"), None);
    }

    #[test]
    fn every_choice_is_spelled_as_serde_spells_it() {
        names_are_serde_names::<crate::llm::BackendKind>();
        names_are_serde_names::<crate::llm::openai::PrefillMode>();
        names_are_serde_names::<crate::llm::openai::OptionScoring>();
        names_are_serde_names::<crate::stages::label::LabelMode>();
        names_are_serde_names::<crate::stages::revise::LongPrompt>();
        names_are_serde_names::<crate::stages::revise::SftFormat>();
        names_are_serde_names::<crate::pipeline::Stage>();
        names_are_serde_names::<crate::train::advantage::AdvantageEstimator>();
        names_are_serde_names::<crate::export::ExportKind>();
        names_are_serde_names::<crate::export::Style>();
        names_are_serde_names::<crate::train::ScheduleKind>();
        names_are_serde_names::<crate::train::Precision>();
    }
}
