"""One date format everywhere, always with its time zone (the user's own, fleet.models.profile;
UTC by default). Templates use ``|date`` / ``|date:"SHORT_DATETIME_FORMAT"`` and tables'
DateTimeColumn its default, so no page spells a format of its own."""

DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s T"
