"""Money: Decimal amounts in ISO 4217 currencies, parsed from decimal strings and never from floats."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation, Overflow

from server.domain.errors import echo

# ISO 4217 active codes whose minor unit is not 2 (fund and precious-metal codes excluded).
_MINOR_UNITS_EXCEPTIONS: dict[str, int] = {
    # no minor unit
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "UYI": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    # three digits
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
    # four digits
    "CLF": 4,
    "UYW": 4,
}

_TWO_DIGIT_CODES = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD
CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD
GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD
MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP
PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS
TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD XCG YER ZAR ZMW ZWG
"""

#: ISO 4217 alphabetic code -> number of fraction digits the currency allows.
MINOR_UNITS: dict[str, int] = {code: 2 for code in _TWO_DIGIT_CODES.split()} | _MINOR_UNITS_EXCEPTIONS
#: The most fraction digits of any currency: every stored amount has at most this many (a CHECK too).
AMOUNT_SCALE_MAX = max(MINOR_UNITS.values())

#: Largest amount accepted for one payment, whatever the currency.
AMOUNT_MAX = Decimal("1000000000000000")  # 10^15, also a CHECK on payments.amount

_DECIMAL_STRING = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")  # used with fullmatch: no trailing newline


#: Arithmetic on money and quantities: wide enough for any value the schema holds, never rounding silently.
EXACT = Context(prec=60, traps=[InvalidOperation, Overflow])


class MoneyError(ValueError):
    """An amount or a currency that is not acceptable; the message says why."""


@dataclass(frozen=True)
class Money:
    """An exact, positive-or-zero amount quantized to its currency's minor unit."""

    amount: Decimal
    currency_code: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError(f"Money.amount must be a Decimal, not {type(self.amount).__name__}")

    def to_decimal_string(self) -> str:
        """The canonical string: exactly the currency's number of fraction digits ("12.30", "500")."""
        return format(self.amount, "f")


def minor_units(currency_code: str) -> int:
    """Fraction digits of a currency; MoneyError if the code is not an active ISO 4217 currency."""
    try:
        return MINOR_UNITS[currency_code]
    except KeyError:
        raise MoneyError(
            f"unknown currency {echo(currency_code)}: expected an ISO 4217 code such as EUR or USD"
        ) from None


def quantize(amount: Decimal, currency_code: str) -> Money:
    """Money with exactly the currency's fraction digits; raises MoneyError if that would round."""
    exponent = Decimal(1).scaleb(-minor_units(currency_code))
    quantized = amount.quantize(exponent, context=EXACT)
    if quantized != amount:
        raise MoneyError(f"{amount} has more fraction digits than {currency_code} allows")
    return Money(quantized, currency_code)


def parse_currency(currency_code: str) -> str:
    if not currency_code:
        raise MoneyError("is required: an ISO 4217 code such as EUR or USD")
    minor_units(currency_code)
    return currency_code


#: The longest amount string read: 16 integer digits (AMOUNT_MAX has 16), a point and fraction digits to spare.
AMOUNT_LENGTH_MAX = 40


def _what_is_wrong(value: str) -> str:
    """Why a string is not a plain decimal, in the words of what it holds."""
    if value[:1] in "+-":
        return "it has a sign (amounts are positive; the direction is the operation's)"
    if any(c.isspace() for c in value):
        return "it holds spaces"
    if any(c in "eE" for c in value) and any(c.isdigit() for c in value):
        return "it has an exponent"
    if len(value) > 1 and value[0] == "0" and value[1].isdigit():
        return "it has leading zeros"
    if value.count(".") > 1 or value.startswith(".") or value.endswith("."):
        return "it needs digits on both sides of one decimal point"
    return "an amount holds only digits and one decimal point"


def parse_amount(value: str, currency_code: str) -> Decimal:
    """Parse a decimal string into a Decimal quantized to the currency's minor unit.

    Rejects signs, exponents, whitespace, more fraction digits than the currency allows, and
    amounts over AMOUNT_MAX. Zero is accepted here; callers that need a positive amount check it.
    """
    if not value:
        raise MoneyError('is required: a decimal string such as "12.34"')
    if len(value) > AMOUNT_LENGTH_MAX:
        raise MoneyError(f"is {len(value)} characters long; an amount has at most {AMOUNT_LENGTH_MAX}")
    if not _DECIMAL_STRING.fullmatch(value):
        raise MoneyError(f'{echo(value)} is not a plain decimal string such as "12.34": {_what_is_wrong(value)}')
    digits = minor_units(currency_code)
    try:
        amount = Decimal(value)
    except InvalidOperation:  # unreachable after the regex, kept as a guard on money input
        raise MoneyError(f"{value!r} is not a decimal number") from None
    fraction = value.partition(".")[2]
    if len(fraction) > digits:
        raise MoneyError(f"{value!r} has more than {digits} fraction digits, the most {currency_code} allows")
    if amount > AMOUNT_MAX:
        raise MoneyError(f"{value!r} is over the maximum of {AMOUNT_MAX}")
    return quantize(amount, currency_code).amount
