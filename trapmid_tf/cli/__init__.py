"""The console commands (`trapmid-train`, `trapmid-prior`, `trapmid-attack`, `trapmid-evaluate`,
`trapmid-pipeline`): each module parses its flags and runs one stage, or the whole pipeline."""
